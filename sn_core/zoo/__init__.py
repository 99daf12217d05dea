"""Model zoo: builders by name, all with a swappable ``norm_layer``.

Importing this package registers the built-in architectures; plug-ins from the
``normsearch.models`` entry-point group are loaded on demand (see ``registry``).
"""

from sn_core.zoo import (  # noqa: F401  (registers)
    char_lm,
    cnn1d,
    mlp,
    mobilenet,
    resnet,
    resnet_cifar,
    vgg,
    vit,
)
from sn_core.zoo.registry import (
    MODELS,
    build_model,
    get_model_builder,
    list_models,
    register_model,
)

__all__ = ["MODELS", "build_model", "get_model_builder", "list_models", "register_model"]
