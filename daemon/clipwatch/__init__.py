"""clipwatch: watch directories, embed every new image with CLIP, upsert its vector into MySQL 9 or SQLite."""

__version__ = "0.1.0"
