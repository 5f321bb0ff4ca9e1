/// The release of this build of Parley.
public let parleyVersion = "0.1.0"
