// libsodium: Argon2id password hashes, random tokens, hashes of tokens,
// constant-time comparison.
import CSodium

/// libsodium's functions, initialised once.
public enum Sodium {
    private static let initialised: Bool = sodium_init() >= 0

    /// Makes sure libsodium is initialised; call before any other function.
    public static func ensureInitialised() {
        precondition(initialised, "libsodium failed to initialise")
    }

    /// Cryptographically secure random bytes.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        ensureInitialised()
        var bytes = [UInt8](repeating: 0, count: count)
        randombytes_buf(&bytes, count)
        return bytes
    }

    /// An Argon2id hash string (crypto_pwhash_str, interactive limits). Takes tens of
    /// milliseconds by design: call it off the event loops.
    public static func hashPassword(_ password: String) -> String? {
        ensureInitialised()
        var output = [CChar](repeating: 0, count: Int(crypto_pwhash_STRBYTES))
        let bytes = Array(password.utf8) + [0]
        let status = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                crypto_pwhash_str(&output, chars.baseAddress!, UInt64(bytes.count - 1), UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE), Int(crypto_pwhash_MEMLIMIT_INTERACTIVE))
            }
        }
        guard status == 0 else { return nil }
        return String(decoding: output.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Checks password against an Argon2id hash string, in constant time for the comparison.
    public static func verifyPassword(_ password: String, hash: String) -> Bool {
        ensureInitialised()
        let bytes = Array(password.utf8) + [0]
        return bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                crypto_pwhash_str_verify(hash, chars.baseAddress!, UInt64(bytes.count - 1)) == 0
            }
        }
    }

    /// A 32-byte BLAKE2b hash (crypto_generichash), used to store tokens.
    public static func hash(_ bytes: [UInt8]) -> [UInt8] {
        ensureInitialised()
        var output = [UInt8](repeating: 0, count: 32)
        crypto_generichash(&output, 32, bytes, UInt64(bytes.count), nil, 0)
        return output
    }

    /// Compares two byte strings without an early exit.
    public static func constantTimeEqual(_ left: [UInt8], _ right: [UInt8]) -> Bool {
        guard left.count == right.count else { return false }
        return sodium_memcmp(left, right, left.count) == 0
    }
}

extension Array where Element == UInt8 {
    /// Lower-case hexadecimal.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(count * 2)
        for byte in self {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// URL-safe base64 without padding.
    public var base64URL: String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var text = [UInt8]()
        var index = 0
        while index + 3 <= count {
            let chunk = UInt32(self[index]) << 16 | UInt32(self[index + 1]) << 8 | UInt32(self[index + 2])
            text.append(contentsOf: [alphabet[Int(chunk >> 18 & 63)], alphabet[Int(chunk >> 12 & 63)], alphabet[Int(chunk >> 6 & 63)], alphabet[Int(chunk & 63)]])
            index += 3
        }
        if count - index == 1 {
            let chunk = UInt32(self[index]) << 16
            text.append(contentsOf: [alphabet[Int(chunk >> 18 & 63)], alphabet[Int(chunk >> 12 & 63)]])
        } else if count - index == 2 {
            let chunk = UInt32(self[index]) << 16 | UInt32(self[index + 1]) << 8
            text.append(contentsOf: [alphabet[Int(chunk >> 18 & 63)], alphabet[Int(chunk >> 12 & 63)], alphabet[Int(chunk >> 6 & 63)]])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
