"""What a person looks at: `loki report RUN_DIR` (report.html and report.md with plots) and the figures of
`loki ablate`."""
