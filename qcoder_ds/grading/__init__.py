"""nbgrader-compatible grading: release, sandboxed autograde, feedback, gradebook, export."""
