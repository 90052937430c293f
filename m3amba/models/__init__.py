"""Model families. Importing this package registers every variant config."""
from .factory import get_model_config, list_model_configs
from .m3amba import M3amba, M3ambaFeatureExtractor, M3ambaFeatures, M3ambaOutput

__all__ = ["M3amba", "M3ambaFeatureExtractor", "M3ambaFeatures", "M3ambaOutput", "get_model_config", "list_model_configs"]
