// swift-tools-version: 6.1
// Conclave: distributed inference of Mixture-of-Experts models from GGUF files.
// Dependency direction (docs/ARCHITECTURE.md § Modules draws the whole graph; ModuleGraphTests checks it against
// this file and the imports): conclave → Coordinator / Worker → ClusterProtocol → Wire, Generation → Model →
// Kernels → Runtime. Keep the debug build lean: every package here is built by CI from scratch.
import PackageDescription

let package = Package(
    name: "Conclave",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "conclave", targets: ["conclave"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Exact, without traits: SwiftPM 6.3 otherwise rebuilds it on about every other build (DESIGN.md § Wire).
        // The generated code is committed (scripts/gen-proto.sh); the build plugin is never used.
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0", traits: []),
        // Daemons as Services in a ServiceGroup: SIGTERM/SIGINT drain and exit cleanly.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // The OpenAI-compatible HTTP API (Sources/Serving).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // Metrics: the swift-metrics API where things are counted, one Prometheus registry for /metrics.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        // SHA-256 at hardware speed for model identity and fetch (already in the graph through Hummingbird's).
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
    ],
    targets: [
        .target(name: "GGUF", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // Hot dot products in C, one function per format × ISA, chosen at run time (no -march flags needed).
        .target(name: "CKernels"),
        // System calls Swift's Glibc overlay lacks (affinity, parent-death signal).
        .target(name: "CHost"),
        // Runtime utilities below everything else: the injected Clock (monotonic, manual for tests), the thread
        // pool, Monitor, PollingQueue.
        .target(name: "Runtime", dependencies: ["CHost"]),
        .target(name: "Kernels", dependencies: ["GGUF", "CKernels", "Runtime"]),
        .target(name: "Tokenizer", dependencies: ["GGUF"]),
        // JSON with keys in order: `--json` output, HTTP bodies, chat template variables.
        .target(name: "JSON"),
        // Chat templates: a jinja2 subset rendering `tokenizer.chat_template` byte for byte as transformers does.
        .target(name: "ChatTemplate", dependencies: ["JSON"]),
        // Constrained output: GBNF grammars and JSON Schemas matched over a vocabulary's bytes, token masks per state.
        .target(name: "Grammar", dependencies: ["JSON", "Tokenizer"]),
        .target(name: "Model", dependencies: ["GGUF", "Kernels", "Runtime", "Tokenizer", "Grammar"]),
        // Generation as a transport-free state machine (continuous batching over a StepExecutor: a cluster or
        // this process's stages), with the policy that ends each sequence.
        .target(name: "Generation", dependencies: ["Model", "Runtime", "Telemetry", "Tokenizer", .product(name: "CoreMetrics", package: "swift-metrics")]),
        // The one metrics registry (Prometheus exposition for GET /metrics).
        .target(name: "Telemetry", dependencies: [.product(name: "CoreMetrics", package: "swift-metrics"),
                                                  .product(name: "Prometheus", package: "swift-prometheus")]),
        // The front door for OpenAI clients: /v1/chat/completions, /v1/completions, SSE, /health, /metrics.
        .target(name: "Serving", dependencies: ["Generation", "ChatTemplate", "Grammar", "JSON", "Model", "Tokenizer", "Telemetry",
                                                .product(name: "Hummingbird", package: "hummingbird")]),
        // The wire contract: generated protobuf messages and multipart framing with raw tensor frames.
        // zmq.h is in /usr/include and the module map links libzmq; no pkgConfig, whose -isystem flags SwiftPM
        // rejects with a warning on every build.
        .systemLibrary(name: "CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        // CurveZMQ key values and certificate files (Z85 through libzmq): read by cluster files and sockets alike.
        .target(name: "CurveKeys", dependencies: ["CZeroMQ"]),
        .target(name: "Wire", dependencies: ["CZeroMQ", "CurveKeys", "Runtime", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // Every proto <-> domain mapping (steps and sampled tokens, sampling, errors and their codes, expert sets,
        // metric samples, status, model chunks) and the coordinator's client, shared by Coordinator, Worker and CLI.
        .target(name: "ClusterProtocol", dependencies: ["Wire", "Generation", "Model", "GGUF", "Telemetry", "JSON"]),
        // The worker's services: expert serving and calls to other workers' experts.
        .target(name: "Worker", dependencies: ["GGUF", "Model", "Kernels", "Runtime", "CurveKeys", "Wire", "ClusterProtocol", "Telemetry", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
        // The coordinator: membership, assignment, the generation scheduler and cluster status.
        .target(name: "Coordinator", dependencies: ["ClusterProtocol", "CurveKeys", "Generation", "Telemetry", "Placement", "Wire", "Model", "Runtime", "Tokenizer", "GGUF",
                                                    .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
        // Where layers and experts live: a pure function of the model's footprint and the cluster file.
        .target(name: "Placement", dependencies: ["GGUF", "Model", "CurveKeys", .product(name: "Yams", package: "Yams")]),
        .executableTarget(
            name: "conclave",
            dependencies: [
                "GGUF", "CHost", "Runtime", "JSON", "ChatTemplate", "Generation", "Grammar", "Serving", "Telemetry", "Model", "Kernels", "Tokenizer", "Placement", "CurveKeys", "Wire", "ClusterProtocol", "Worker", "Coordinator",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // The HTTP server's connection limit (MaximumAvailableConnections).
                .product(name: "HummingbirdCore", package: "hummingbird"),
            ]
        ),
        // Fuzz harnesses (scripts/fuzz TARGET SECONDS builds them with -sanitize=fuzzer -DFUZZING); a plain build
        // makes replay tools that run corpus files through the same function.
        .executableTarget(name: "FuzzWire", dependencies: ["Worker", "Wire", "CurveKeys", "GGUF", "Model"]),
        .executableTarget(name: "FuzzGGUF", dependencies: ["GGUF", "Model", "Tokenizer"]),
        // Locates Tests/Fixtures, the shipped model and (when present) ../shared for the test targets.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "TestSupport"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "GGUF", "TestSupport"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime"]),
        // The repository's own shape: the module graph of the code, the manifest and docs/ARCHITECTURE.md agree.
        .testTarget(name: "RepositoryTests", dependencies: ["TestSupport"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "GGUF", "TestSupport"]),
        .testTarget(name: "GenerationTests", dependencies: ["Runtime", "Generation", "Model", "Kernels", "Tokenizer", "GGUF", "TestSupport"]),
        .testTarget(name: "ServingTests", dependencies: ["Serving", "ChatTemplate", "Generation", "Grammar", "GGUF", "Model", "JSON", "Telemetry", "Tokenizer", "TestSupport",
                                                     .product(name: "HummingbirdTesting", package: "hummingbird")]),
        .testTarget(name: "GrammarTests", dependencies: ["Grammar", "JSON", "Tokenizer", "GGUF", "TestSupport"]),
        .testTarget(name: "ChatTemplateTests", dependencies: ["ChatTemplate", "TestSupport"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "CurveKeys", "TestSupport"]),
        .testTarget(name: "WorkerTests", dependencies: ["Runtime", "CurveKeys", "ClusterProtocol", "Worker", "Coordinator", "Generation", "Tokenizer", "Placement", "JSON", "Wire", "Telemetry", "Model", "GGUF", "Kernels", "TestSupport"]),
        // A coordinator and workers in this process over the in-memory transports and a manual clock.
        .testTarget(name: "CoordinatorTests", dependencies: ["Coordinator", "ClusterProtocol", "Worker", "Wire", "Runtime", "Generation", "Model",
                                                         "Placement", "Telemetry", "CurveKeys", "TestSupport"]),
        // Real processes: workers, coordinator and clients on loopback and in network namespaces.
        .testTarget(name: "ClusterTests", dependencies: ["TestSupport", "Wire", "ClusterProtocol", "Worker", "Model", "GGUF"]),
        .testTarget(name: "PlacementTests", dependencies: ["Runtime", "Placement", "CurveKeys", "Model", "GGUF", "TestSupport"]),
        .testTarget(name: "ModelTests", dependencies: ["Runtime", "Model", "GGUF", "Kernels", "Tokenizer", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
