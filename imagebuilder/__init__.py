"""imagebuilder: one YAML recipe in, flashable Raspberry Pi cluster images out."""

__version__ = "0.1.0"
