import JSON

/// The CLI's `--json` output is the shared ordered JSON value.
typealias JSON = JSONValue
