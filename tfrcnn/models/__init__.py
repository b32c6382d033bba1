"""Models: :class:`FasterRCNN`."""
from tfrcnn.models.faster_rcnn import FasterRCNN

__all__ = ["FasterRCNN"]
