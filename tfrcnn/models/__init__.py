"""Models: :class:`FasterRCNN`."""

from tfrcnn.models.faster_rcnn import FasterRCNN
from tfrcnn.models.loading import ModelFileError, check_model_file, load_model

__all__ = ["FasterRCNN", "ModelFileError", "check_model_file", "load_model"]
