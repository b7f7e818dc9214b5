"""SGD exactly as PyTorch does it, with the poly learning-rate schedule of HRNet in HRNet's order.

PyTorch's ``SGD(momentum, weight_decay)`` *couples* weight decay to the gradient: ``d = g + wd * p``,
``buf = momentum * buf + d``, ``p -= lr * buf``, for every parameter (BN gamma/beta included in HRNet's recipe).
Keras' ``SGD(weight_decay=...)`` instead *decouples* it (``p -= lr * wd * p`` separately, AdamW style) and its
momentum accumulates ``lr * g``; with a changing lr the two differ. :class:`TorchSGD` reproduces PyTorch.

The poly schedule is ``poly(it) = base * (1 - it / max_it) ** 0.9`` per iteration (HRNet
lib/utils/utils.py ``adjust_learning_rate``). HRNet sets the lr *after* each optimizer step (lib/core/function.py
``train``: ``optimizer.step()``, then ``adjust_learning_rate(..., i_iter + cur_iters)``): the step of global
iteration ``it`` is followed by ``lr = poly(it)``. So steps 0 and 1 both run at the base lr and step ``k >= 1``
runs at ``poly(k - 1)``. Keras' ``PolynomialDecay`` gives step ``k`` the lr ``poly(k)``, one iteration ahead.
:class:`PolyDecay` follows HRNet's order by default (``hrnet_order=False`` gives Keras' order). It is a function
of the optimizer's iteration counter, so a resumed run continues the schedule exactly.

The update of each parameter is TensorFlow's ``ResourceApplyMomentum`` kernel (``accum = accum * momentum + d``,
``var -= lr * accum``: PyTorch's step, in one op) after the weight-decay term: five graph ops per parameter instead
of a dozen, which the first (traced) training step pays for every one of a model's hundreds of parameters.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="gsto_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum and coupled (L2) weight decay semantics (no dampening, no Nesterov)."""

    def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay_l2=0.0, name="torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.momentum = float(momentum)
        self.weight_decay_l2 = float(weight_decay_l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables] if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        # ``variable`` is the tf.Variable (Keras' TensorFlow optimizer unwraps it; under a distribution strategy,
        # the replica's copy, and the slot's ``handle`` is that device's copy too).
        lr = tf.cast(learning_rate, variable.dtype)
        g = tf.cast(gradient, variable.dtype)
        if self.weight_decay_l2:
            g = g + self.weight_decay_l2 * variable
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            tf.raw_ops.ResourceApplyMomentum(var=variable.handle, accum=buf.handle, lr=lr, grad=g,
                                             momentum=tf.constant(self.momentum, variable.dtype),
                                             use_locking=False, use_nesterov=False)
        else:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=g, use_locking=False)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay_l2": self.weight_decay_l2})
        return config


@keras.saving.register_keras_serializable(package="gsto_tf")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Poly learning rate ``base * (1 - it / total_steps) ** power`` for the optimizer step with iteration count
    ``k`` (0-based): ``it = k - 1`` (HRNet's order; ``it = 0`` for ``k = 0``), or ``it = k`` with
    ``hrnet_order=False`` (Keras' ``PolynomialDecay``). ``it`` is clipped to ``[0, total_steps]``; computed in float64
    (the optimizer casts it to each variable's dtype).
    """

    def __init__(self, base_lr, total_steps, power=0.9, hrnet_order=True):
        if int(total_steps) <= 0:
            raise ValueError(f"PolyDecay: total_steps must be a positive int, got {total_steps!r}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.hrnet_order = bool(hrnet_order)

    def __call__(self, step):
        it = keras.ops.cast(step, "float64") - (1.0 if self.hrnet_order else 0.0)
        it = keras.ops.clip(it, 0.0, float(self.total_steps))
        return self.base_lr * keras.ops.power(1.0 - it / self.total_steps, self.power)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "power": self.power,
                "hrnet_order": self.hrnet_order}


def poly_schedule(base_lr, total_steps, power=0.9, hrnet_order=True):
    """The poly schedule of the recipes: :class:`PolyDecay` (HRNet's order unless ``hrnet_order=False``)."""
    return PolyDecay(base_lr, total_steps, power, hrnet_order)
