"""fracture_lib: MURA fracture detection helpers."""
__version__ = "0.1.0"
