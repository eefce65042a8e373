import ArgumentParser
import CurveKeys
import Foundation
import Wire

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "CurveZMQ keys for an authenticated cluster.",
        subcommands: [KeysGenerate.self]
    )
}

struct KeysGenerate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Make CurveZMQ key pairs: NAME.key (public, give it out) and NAME.key_secret (mode 0600, keep it) per name.",
        discussion: """
        Names: `coordinator`, each worker's cluster-file name, and `client` for the `generate`/`status` clients, e.g.
          conclave keys generate -o keys coordinator big-1 big-2 small-1 client
        then copy to each host its own NAME.key_secret and coordinator.key (`conclave worker --key-dir DIR --name NAME`),
        give the coordinator coordinator.key_secret (`conclave serve --key-dir DIR`), and a client client.key_secret
        and coordinator.key (`conclave generate --key-dir DIR`). Prints the cluster-file lines that list the public keys.
        """
    )

    @Option(name: .shortAndLong, help: "Directory to write the key files into (made if missing).") var output: String
    @Argument(help: "Who each key pair is for.") var names: [String] = ["coordinator"]
    @Flag(help: "Replace key files that exist (peers that list the old public keys will refuse the new ones).") var force = false

    func validate() throws {
        guard Set(names).count == names.count else { throw ValidationError("a name is given twice") }
    }

    func run() throws {
        var keys: [(String, CurveKey)] = []
        for name in names {
            do {
                let pair = try CurveKeyPair.generate()
                try CurveCertificate.write(pair, name: name, into: output, overwrite: force)
                keys.append((name, pair.publicKey))
                printError("wrote \(CurveCertificate.publicPath(output, name)) and \(CurveCertificate.secretPath(output, name))")
            } catch {
                printError("error: \(error)")
                throw ExitCode(1)
            }
        }
        // What the cluster file needs: paste under the matching entries.
        for (name, key) in keys {
            switch name {
            case "coordinator": print("coordinator_key: \"\(key.z85)\"")
            case "client": print("client_keys: [\"\(key.z85)\"]")
            default: print("# worker \(name): its entry's key (or, for `worker --join`, an item of join_keys)\n    key: \"\(key.z85)\"")
            }
        }
    }
}
