import sys
from pathlib import Path

# the grading helpers (small nbgrader assignments built in code)
sys.path.insert(0, str(Path(__file__).parents[1] / "grading"))
# the lessons' drafted-exercise fixtures
sys.path.insert(0, str(Path(__file__).parents[1] / "lessons"))
