#if canImport(Glibc)
import Glibc
#endif
import CZeroMQ
import Foundation

/// A CurveZMQ public key as ZeroMQ writes it: 40 characters of Z85 (RFC 32) for 32 bytes. Checked on creation,
/// so a key read from a cluster file or a certificate is known to decode.
public struct CurveKey: Sendable, Hashable, CustomStringConvertible {
    public let z85: String

    public init(z85 text: String) throws(KeyError) {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.utf8.count == 40 else { throw KeyError("'\(t.prefix(48))' is not a CurveZMQ key: a key is 40 characters of Z85 (`conclave keys generate` writes them)") }
        var raw = [UInt8](repeating: 0, count: 32)
        guard zmq_z85_decode(&raw, t) != nil else { throw KeyError("'\(t)' is not a CurveZMQ key: it has characters outside Z85") }
        z85 = t
    }

    /// A key given on a command line or in a cluster file: the 40 characters themselves, or the path of a
    /// certificate file (`NAME.key` or `NAME.key_secret`), relative to `directory` when not absolute.
    public init(keyOrFile s: String, relativeTo directory: String? = nil) throws(KeyError) {
        if let k = try? CurveKey(z85: s) {
            self = k
            return
        }
        let path = s.hasPrefix("/") || directory == nil ? s : URL(fileURLWithPath: directory!).appendingPathComponent(s).path
        guard FileManager.default.fileExists(atPath: path) else {
            throw KeyError("'\(s)' is neither a CurveZMQ key (40 characters of Z85) nor a certificate file")
        }
        self = try CurveCertificate.read(path).publicKey
    }

    /// First characters, enough to tell keys apart in a log line.
    public var description: String { String(z85.prefix(8)) + "…" }
}

/// A key pair: what a socket needs to speak CurveZMQ as itself.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: CurveKey
    /// Z85 of the secret key; never logged.
    package let secretZ85: String

    /// A fresh pair from libsodium (through libzmq).
    public static func generate() throws(KeyError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw KeyError("libzmq cannot make CurveZMQ keys (built without libsodium?)") }
        return CurveKeyPair(publicKey: try CurveKey(z85: String(nulTerminated: pub)), secretZ85: String(nulTerminated: sec))
    }

    /// The pair whose secret key is `secret` (the public key derived from it, so the two always match).
    public init(secret: String) throws(KeyError) {
        let s = secret.trimmingCharacters(in: .whitespacesAndNewlines)
        _ = try CurveKey(z85: s)  // the same shape as a public key
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, s) == 0 else { throw KeyError("cannot derive a public key from this secret key") }
        publicKey = try CurveKey(z85: String(nulTerminated: pub))
        secretZ85 = s
    }

    init(publicKey: CurveKey, secretZ85: String) {
        self.publicKey = publicKey
        self.secretZ85 = secretZ85
    }
}

/// ZeroMQ's certificate files as CZMQ's `zcert_save` writes them: `NAME.key` holds the public key (give it to
/// peers), `NAME.key_secret` both keys (mode 0600, keep it on the host that is NAME).
public enum CurveCertificate {
    public static func publicPath(_ dir: String, _ name: String) -> String { URL(fileURLWithPath: dir).appendingPathComponent("\(name).key").path }
    public static func secretPath(_ dir: String, _ name: String) -> String { publicPath(dir, name) + "_secret" }

    /// Writes NAME.key and NAME.key_secret into `dir` (made if missing). Refuses to overwrite a secret file:
    /// a regenerated key would lock its owner out of a cluster that lists the old one.
    public static func write(_ pair: CurveKeyPair, name: String, into dir: String, overwrite: Bool = false) throws(KeyError) {
        guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else { throw KeyError("'\(name)' cannot name a key file") }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw KeyError("cannot make the key directory \(dir): \(error.localizedDescription)")
        }
        let secret = secretPath(dir, name)
        if !overwrite, FileManager.default.fileExists(atPath: secret) {
            throw KeyError("\(secret) exists; remove it first to replace that key (peers that list the old public key would refuse the new one)")
        }
        let stamp = ISO8601DateFormatter().string(from: Date())
        let head = "#   ****  Generated on \(stamp) by conclave  ****\n"
        let pub = head + "#   ZeroMQ CURVE Public Certificate\n#   Give this file to the peers that must admit \(name).\n\nmetadata\n    name = \"\(name)\"\ncurve\n    public-key = \"\(pair.publicKey.z85)\"\n"
        let sec = head + "#   ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\nmetadata\n    name = \"\(name)\"\ncurve\n    public-key = \"\(pair.publicKey.z85)\"\n    secret-key = \"\(pair.secretZ85)\"\n"
        try save(pub, to: publicPath(dir, name), mode: 0o644)
        try save(sec, to: secret, mode: 0o600)
    }

    private static func save(_ text: String, to path: String, mode: Int) throws(KeyError) {
        // Created with its final mode, so the secret is never readable by others, not even for a moment.
        let tmp = path + ".tmp\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode_t(mode))
        guard fd >= 0 else { throw KeyError("cannot write \(path): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, mode_t(mode))
        Glibc.close(fd)
        guard n == bytes.count, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw KeyError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The keys in a certificate file: CZMQ's format, or a file holding just the 40-character public key.
    public static func read(_ path: String) throws(KeyError) -> (publicKey: CurveKey, pair: CurveKeyPair?) {
        guard let data = FileManager.default.contents(atPath: path) else { throw KeyError("cannot read the key file \(path)") }
        let text = String(decoding: data, as: UTF8.self)
        func field(_ name: String) -> String? {
            for line in text.split(separator: "\n") {
                let t = line.trimmingCharacters(in: .whitespaces)
                guard t.hasPrefix(name), let eq = t.firstIndex(of: "=") else { continue }
                guard t[t.startIndex..<eq].trimmingCharacters(in: .whitespaces) == name else { continue }
                return t[t.index(after: eq)...].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
            return nil
        }
        do throws(KeyError) {
            if let secret = field("secret-key") {
                let pair = try CurveKeyPair(secret: secret)
                if let pub = field("public-key"), pub != pair.publicKey.z85 {
                    throw KeyError("its public-key is not the one its secret-key gives (an edited file?)")
                }
                return (pair.publicKey, pair)
            }
            if let pub = field("public-key") { return (try CurveKey(z85: pub), nil) }
            return (try CurveKey(z85: text), nil)
        } catch {
            throw KeyError("\(path): \(error.message)")
        }
    }

    /// The key pair in NAME.key_secret of `dir`, with a message saying how to make one when it is missing.
    public static func pair(_ dir: String, _ name: String) throws(KeyError) -> CurveKeyPair {
        let path = secretPath(dir, name)
        guard FileManager.default.fileExists(atPath: path) else {
            throw KeyError("no secret key \(path); make one with `conclave keys generate -o \(dir) \(name)`")
        }
        guard let pair = try read(path).pair else { throw KeyError("\(path) holds no secret-key") }
        return pair
    }
}

public struct KeyError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

package extension String {
    /// The text of a NUL-terminated C buffer that libzmq filled (Z85 keys).
    init(nulTerminated buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
