"""A corpus of realistic changes to torch.optim's Adam (AMSGrad), AdamW, SGD, RMSprop,
NAdam, RAdam, Adagrad and Adafactor, for the detection benchmark
(``python benchmarks/detection.py``; docs/regressions.md).

``CHANGES`` lists each change with the torch.optim class it stands in for: a
*regression* changes the algorithm and must be caught; an *equivalent* rewrites it
without changing it and must not alarm. The plain re-implementations they modify are in
``originals`` (bit-identical to torch.optim's CPU path: tests/test_regressions.py).
Regressions with a ``cite`` are modelled on a bug reported against an optimizer library;
their docstrings say what the bug was and how the change models it.

A substituted class reads, for the harness, as the class it replaces: importing this
package registers every change (and every original) in the harness's per-class tables —
the preconditioner reader, the second-moment reader and the stability-threshold rule — with
the replaced torch class's entry, so the threshold and preconditioned-sharpness probes
treat a changed Adam exactly as they would treat a patched ``torch.optim.Adam``. (Without
it they refuse a class that overrides Adam's update methods, and every probed case would
report "unknown", failing equivalents and regressions alike for the wrong reason.)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from . import changes as c
from . import originals

REGRESSION, EQUIVALENT = "regression", "equivalent"

FAMILIES = {"torch.optim.Adam": "Adam", "torch.optim.AdamW": "Adam", "torch.optim.NAdam": "Adam",
            "torch.optim.RAdam": "Adam", "torch.optim.SGD": "SGD", "torch.optim.RMSprop": "RMSprop/Adagrad",
            "torch.optim.Adagrad": "RMSprop/Adagrad", "torch.optim.Adafactor": "Adafactor"}


@dataclass(frozen=True)
class Change:
    name: str
    replaces: str              # the case's class string it is substituted for
    cls: type
    kind: str                  # REGRESSION or EQUIVALENT
    cite: str = ""             # "owner/repo#number" of the bug it is modelled on ("" if none)
    when: tuple[str, ...] = ()  # hyperparameters that must be set (truthy) for it to act

    @property
    def what(self) -> str:
        return " ".join((self.cls.__doc__ or "").strip().split("\n\n")[0].split())

    @property
    def family(self) -> str:
        return FAMILIES[self.replaces]

    def acts_on(self, entry) -> bool:
        """Whether the change can act on a case's optimizer entry (a schema.OptimizerSpec of
        class ``replaces``): every ``when`` hyperparameter truthy at some sweep point, torch's
        default where the entry leaves it out. Where it cannot, the changed run executes
        exactly the original's code, bit for bit — skipping it is exact."""
        if entry.class_name != self.replaces:
            return False
        defaults = inspect.signature(entry.cls.__init__).parameters
        for name in self.when:
            if name in entry.sweeps:
                values = list(entry.sweeps[name])
            elif name in entry.fixed:
                values = [entry.fixed[name]]
            else:
                values = [defaults[name].default] if name in defaults else []
            if not any(values):
                return False
        return True


ORIGINALS = {"torch.optim.Adam": originals.Adam, "torch.optim.AdamW": originals.AdamW,
             "torch.optim.SGD": originals.SGD, "torch.optim.RMSprop": originals.RMSprop,
             "torch.optim.NAdam": originals.NAdam, "torch.optim.RAdam": originals.RAdam,
             "torch.optim.Adagrad": originals.Adagrad, "torch.optim.Adafactor": originals.Adafactor}

ADAM, ADAMW, SGD, RMSPROP = "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD", "torch.optim.RMSprop"
NADAM, RADAM = "torch.optim.NAdam", "torch.optim.RAdam"
ADAGRAD, ADAFACTOR = "torch.optim.Adagrad", "torch.optim.Adafactor"
MOMENTUM, NESTEROV, AMSGRAD = ("momentum",), ("momentum", "nesterov"), ("amsgrad",)

_R = [
    # name, replaces, class, citation, when
    ("adam_eps_inside_sqrt", ADAM, c.AdamEpsInsideSqrt, "", ()),
    ("adam_no_bias_correction2", ADAM, c.AdamNoBiasCorrection2, "", ()),
    ("adam_no_bias_correction1", ADAM, c.AdamNoBiasCorrection1, "", ()),
    ("adam_bias_corrections_swapped", ADAM, c.AdamBiasCorrectionSwapped, "", ()),
    ("adam_step_off_by_one", ADAM, c.AdamStepOffByOne, "pytorch/torchtitan#4382", ()),
    ("adam_beta2_default_0.99", ADAM, c.AdamBeta2Default, "", ()),
    ("adam_eps_default_1e-7", ADAM, c.AdamEpsDefault, "", ()),
    ("adam_state_bf16", ADAM, c.AdamStateBf16, "", ()),
    ("adam_stale_momentum", ADAM, c.AdamStaleMomentum, "", ()),
    ("adamw_coupled_decay", ADAMW, c.AdamWCoupledDecay, "bitsandbytes-foundation/bitsandbytes#1992", ()),
    ("adamw_decay_not_scaled_by_lr", ADAMW, c.AdamWDecayNotScaledByLr, "", ()),
    ("adamw_decay_default_0", ADAMW, c.AdamWDecayDefault, "huggingface/transformers#18946", ()),
    ("sgd_dampening_is_momentum", SGD, c.SGDDampeningIsMomentum, "", MOMENTUM),
    ("sgd_stale_momentum", SGD, c.SGDStaleMomentum, "", MOMENTUM),
    ("sgd_nesterov_ignored", SGD, c.SGDNesterovIgnored, "", NESTEROV),
    ("sgd_momentum_default_0.9", SGD, c.SGDMomentumDefault, "", ()),
    ("sgd_buffer_fp16", SGD, c.SGDBufferFp16, "", MOMENTUM),
    ("rmsprop_eps_inside_sqrt", RMSPROP, c.RMSpropEpsInsideSqrt, "", ()),
    ("rmsprop_alpha_default_0.9", RMSPROP, c.RMSpropAlphaDefault, "", ()),
    ("rmsprop_stale_square_avg", RMSPROP, c.RMSpropStaleSquareAvg, "", ()),
    ("rmsprop_state_bf16", RMSPROP, c.RMSpropStateBf16, "", ()),
    # modelled on reported bugs
    ("amsgrad_max_not_stored", ADAM, c.AMSGradMaxNotStored, "pytorch/pytorch#78807", AMSGRAD),
    ("amsgrad_max_of_corrected_v", ADAM, c.AMSGradMaxOfCorrectedV, "google-deepmind/optax#1389", AMSGRAD),
    ("adam_eps_inside_and_outside_sqrt", ADAM, c.AdamEpsInsideAndOutsideSqrt, "kozistr/pytorch_optimizer#397", ()),
    ("adam_step_counter_bf16", ADAM, c.AdamStepCounterBf16, "pytorch/ao#4915", ()),
    ("adamw_no_bias_correction", ADAMW, c.AdamWNoBiasCorrection, "huggingface/transformers#420", ()),
    ("nadam_mu_product_extra_mu", NADAM, c.NAdamMuProductExtraMu, "pytorch/pytorch#92699", ()),
    ("radam_eps_dropped", RADAM, c.RAdamEpsDropped, "pytorch/pytorch#92551", ()),
    ("adagrad_sum_sqrt_in_place", ADAGRAD, c.AdagradSumSqrtInPlace, "metaopt/torchopt#80", ()),
    ("rmsprop_eps_added_in_place", RMSPROP, c.RMSpropEpsAddedInPlace, "metaopt/torchopt#8", ()),
    ("adafactor_lr_written_back", ADAFACTOR, c.AdafactorLrWrittenBack, "huggingface/transformers#9751", ()),
    ("adafactor_row_factor_dropped", ADAFACTOR, c.AdafactorRowFactorDropped,
     "huggingface/pytorch-image-models#2749", ()),
    ("adafactor_clip_inverted", ADAFACTOR, c.AdafactorClipInverted, "huggingface/pytorch-image-models#2790", ()),
    ("sgd_momentum_buffer_reset", SGD, c.SGDMomentumBufferReset, "kozistr/pytorch_optimizer#516", MOMENTUM),
]
_E = [
    ("adam_foreach", ADAM, c.AdamForeach, ()),
    ("adam_eps_hat", ADAM, c.AdamEpsHat, ()),
    ("sgd_velocity_form", SGD, c.SGDVelocityForm, MOMENTUM),
    ("rmsprop_divide_then_scale", RMSPROP, c.RMSpropDivideThenScale, ()),
    ("adam_capturable_form", ADAM, c.AdamCapturableForm, ()),
    ("adam_square_average_lerp", ADAM, c.AdamSquareAverageLerp, ()),
    ("adamw_decay_as_subtraction", ADAMW, c.AdamWDecayAsSubtraction, ("weight_decay",)),
    ("nadam_single_addcdiv", NADAM, c.NAdamSingleAddcdiv, ()),
    ("radam_capturable_form", RADAM, c.RAdamCapturableForm, ()),
    ("adagrad_divide_then_scale", ADAGRAD, c.AdagradDivideThenScale, ()),
    ("rmsprop_square_average_lerp", RMSPROP, c.RMSpropSquareAverageLerp, ()),
    ("adafactor_mean_of_squares", ADAFACTOR, c.AdafactorMeanOfSquares, ()),
    ("sgd_nesterov_expanded", SGD, c.SGDNesterovExpanded, NESTEROV),
]
CHANGES: list[Change] = ([Change(n, r, cls, REGRESSION, cite, when) for n, r, cls, cite, when in _R]
                         + [Change(n, r, cls, EQUIVALENT, "", when) for n, r, cls, when in _E])


def _read_as_replaced() -> None:
    """Register each original and each change in the harness's per-class tables with the
    entry of the torch class it stands in for (see the module docstring)."""
    from stability_bench.optimizers.resolve import resolve_optimizer_class
    from stability_bench.optimizers.thresholds import TORCH_THRESHOLDS
    from stability_bench.probes.preconditioner import PRECONDITIONERS, SECOND_MOMENTS

    pairs = [(cls, name) for name, cls in ORIGINALS.items()] + [(ch.cls, ch.replaces) for ch in CHANGES]
    for cls, name in pairs:
        replaced = resolve_optimizer_class(name)
        for table in (PRECONDITIONERS, SECOND_MOMENTS, TORCH_THRESHOLDS):
            fact, reason = table.lookup(replaced)
            if fact is not None:
                table.register(cls, fact)
            elif any(base in table for base in replaced.__mro__):   # explicitly unknown there
                table.register_unknown(cls, reason)


_read_as_replaced()
