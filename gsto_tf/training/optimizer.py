"""SGD exactly as PyTorch does it, with the poly learning-rate schedule of HRNet (SPEC §6).

PyTorch's ``SGD(momentum, weight_decay)`` *couples* weight decay to the gradient: ``d = g + wd * p``,
``buf = momentum * buf + d``, ``p -= lr * buf``, for every parameter (BN gamma/beta included in HRNet's recipe).
Keras' ``SGD(weight_decay=...)`` instead *decouples* it (``p -= lr * wd * p`` separately, AdamW style) and its
momentum accumulates ``lr * g``; with a changing lr the two differ. :class:`TorchSGD` reproduces PyTorch.

The poly schedule ``lr = base * (1 - it / max_it) ** 0.9`` per iteration is Keras' own
``PolynomialDecay(base, max_it, end_learning_rate=0, power=0.9)``.
"""

import keras


@keras.saving.register_keras_serializable(package="gsto_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum and coupled (L2) weight decay semantics."""

    def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay_l2=0.0, nesterov=False, name="torch_sgd",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.momentum = float(momentum)
        self.weight_decay_l2 = float(weight_decay_l2)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables] if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        g = keras.ops.cast(gradient, variable.dtype)
        if self.weight_decay_l2:
            g = g + self.weight_decay_l2 * variable
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, self.momentum * buf + g)
            step = g + self.momentum * buf if self.nesterov else buf
        else:
            step = g
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay_l2": self.weight_decay_l2,
                       "nesterov": self.nesterov})
        return config


def poly_schedule(base_lr, total_steps, power=0.9):
    return keras.optimizers.schedules.PolynomialDecay(base_lr, total_steps, end_learning_rate=0.0, power=power)
