"""Lessons: gated exercise generation from the curriculum in lessons/, and explanations."""
