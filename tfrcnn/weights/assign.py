"""Put converted torchvision modules into Keras layers by name, with one-line errors.

A converted module (:func:`tfrcnn.weights.torchvision_spec.convert_modules`) is a list of arrays in
the order its Keras layer stores them. :func:`assign_modules` finds each module's layer by the
Keras name its torchvision name maps to and checks every shape before anything is written.
"""


def keras_name(module, strip=""):
    """The Keras layer name of a torchvision module: ``strip`` removed, ``.`` -> ``_``."""
    if strip and module.startswith(strip):
        module = module[len(strip) :]
    return module.replace(".", "_")


def assign_layer(layer, module, arrays, source="checkpoint"):
    """Sets ``layer``'s weights from one converted module, checking every shape first."""
    weights = layer.weights
    if len(weights) != len(arrays):
        raise ValueError(
            f"{source}: '{module}' has {len(arrays)} tensors, layer '{layer.name}' "
            f"holds {len(weights)}"
        )
    for w, a in zip(weights, arrays):
        if tuple(w.shape) != tuple(a.shape):
            raise ValueError(
                f"{source}: '{module}' gives shape {list(a.shape)} for '{w.path}', "
                f"which has shape {list(w.shape)}"
            )
    for w, a in zip(weights, arrays):
        w.assign(a)


def _layers_by_name(model):
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        found.setdefault(layer.name, layer)
    return found


def assign_modules(model, modules, strip="", add="", source="checkpoint"):
    """Sets the weights of ``model``'s layers from the converted modules whose names start with
    ``strip`` (the rest of the name, ``.`` as ``_``, prefixed by ``add``, names the layer).

    Returns:
        the list of module names assigned.

    Raises:
        ValueError: a module without a layer of that name, or an array whose shape differs from
            the layer's weight (one line naming the module, the layer and both shapes); nothing
            is written then.
    """
    layers = _layers_by_name(model)
    plan = []
    for module, arrays in modules.items():
        if not module.startswith(strip):
            continue
        name = add + keras_name(module, strip)
        layer = layers.get(name)
        if layer is None:
            raise ValueError(
                f"{source}: tensor '{module}' has no layer '{name}' in model '{model.name}'"
            )
        weights = layer.weights
        if len(weights) != len(arrays):
            raise ValueError(
                f"{source}: '{module}' has {len(arrays)} tensors, layer '{name}' "
                f"holds {len(weights)}"
            )
        for w, a in zip(weights, arrays):
            if tuple(w.shape) != tuple(a.shape):
                raise ValueError(
                    f"{source}: '{module}' gives shape {list(a.shape)} for "
                    f"'{w.path}', which has shape {list(w.shape)}"
                )
        plan.append((module, weights, arrays))
    for _, weights, arrays in plan:
        for w, a in zip(weights, arrays):
            w.assign(a)
    return [module for module, _, _ in plan]
