"""The default spine detector shipped with spinedet (see README.md in this folder)."""
