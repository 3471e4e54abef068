"""The AWS library the operators' commands call: a stage's config and names, its resources (bootstrap, wire),
its health (status), its dead letters (dlq), its IAM policies. No terminal output here; results are typed values."""
