"""matplotlib with the headless Agg backend: never needs a display. Every figure imports ``plt`` from here."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
