"""Every choice list that a spec validates or a command offers, each declared once, without torch.

Validation (`ModelSpec`, `RunConfig`, the test-time `Method`, `figure`), the CLI's `choices=` and the help texts
that list values read these; the registries that implement the values are keyed by them (the branch types in
`depthlab.models.branches`, the test-time methods in `depthlab.shift.methods`, the figures in
`depthlab.report.plots`; tests/cli/test_choices.py keeps each equal to its list). A new value is written here
and in its implementation, nowhere else.

They live here rather than beside their implementations because importing `depthlab.models`, `depthlab.shift`
or `depthlab.report` imports torch or matplotlib, which `depthlab --help` must not (tests/cli/test_startup.py).
Lists whose own modules are already light stay there: datasets (`depthlab.data.registry`), precisions
(`depthlab.precision`), run statuses and metrics (`depthlab.records`), export formats (`depthlab.results.export`).
"""

from depthlab.errors import SpecError


def check(field: str, value, allowed) -> None:
    """SpecError naming `field`, `value` and the allowed values unless `value` is one of `allowed`."""
    if value not in allowed:
        raise SpecError(field, value, ", ".join(allowed))


# -- the model (depthlab.models.ModelSpec) ----------------------------------------------------------------------
NORMS = ("batch", "group", "none")
ACTS = ("relu", "gelu", "identity")
HEADS = ("gap", "flatten")
INITS = ("default", "fixup", "skipinit")
SCALE_RULES = ("1", "1/sqrt(n)", "1/n", "learnable")  # residual_scale by name (spaces ignored), or a number
STEM_STRIDES = (1, 2)
BRANCH_TYPES = ("conv", "lk")  # what a block is made of: the classes of depthlab.models.branches.BRANCHES
# lk's depthwise K×K: plain, UniRepLKNet's Dilated Reparam Block, or one of the paper's two controls
REPARAMS = ("none", "dilated", "same_kernel", "same_equivalent")

# -- training (depthlab.spec.config.RunConfig) ----------------------------------------------------------------
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
AUGMENTS = ("none", "translate", "flip", "translate+flip")
BUDGET_BY = ("hidden", "width")  # what param_budget sets

# -- where and how the commands run ----------------------------------------------------------------------------
DEVICES = ("auto", "cpu", "cuda")  # by name, as depthlab.run.runner.resolve_device takes them
BACKENDS = ("local", "ray")  # depthlab.run.runner (this process) or depthlab.run.ray_backend
# the activations' memory layout a pack trains in (depthlab.train.engine.use_channels_last): auto is channels_last
# on CUDA, in bf16 and for large kernels, NCHW for float32 on a CPU (thread-count independent weights, bit for bit)
LAYOUTS = ("auto", "channels_last", "nchw")
COMPARE_TABLES = ("runs", "shift")  # what `depthlab compare` pairs: trained runs, or `depthlab shift`'s rows

# -- test-time methods under covariate shift (depthlab.shift.methods), and what each does ----------------------
SHIFT_METHODS = {
    "source": "the model in eval mode (BN with its training statistics)",
    "norm": "BN with the test batch's statistics",
    "alpha_bn": "BN with (1 - alpha) x source + alpha x batch statistics (You et al. 2021)",
    "tent": "TENT: BN affine trained online on the prediction entropy, Adam lr 1e-3, one step per batch "
            "(predictions from before the step; --episodic resets per batch)",
    "core_reconstructed": "OUR RECONSTRUCTION of the alpha-BN paper's Core loss (its formula is not public): "
                          "alpha-BN plus online steps on the off-diagonal mass of the class correlations",
}

# -- the figures of `depthlab plot KIND` (depthlab.report.plots draws them), and what each shows ----------------
PLOT_KINDS = {
    "scatter-val": "the deep wiring's final validation loss against each shallower one's, per pair",
    "scatter-train": "the same for the training loss",
    "loss-vs-q": "final validation loss against Q, every wiring",
    "curves": "validation loss per epoch of the pairs that differ most (--runs N; 2 epochs or more)",
    "winrate": "share of pairs where a shallower wiring has the lower validation loss, blocks x width",
    "erf": "effective against theoretical receptive field per run (kernels, branch types)",
    "prune": "the density pruning kept in each block, per method and wiring",
}
# The comparison figures and the final metric each draws unless told another (`plot --metric`); only these take a
# metric and split by a config field (`plot --by`).
PLOT_METRICS = {"scatter-val": "val_loss", "scatter-train": "train_loss", "loss-vs-q": "val_loss",
                "curves": "val_loss", "winrate": "val_loss"}
IMAGE_FORMATS = ("png", "svg", "pdf")  # what a figure is saved as, told by the file name's extension
REPORT_IMAGE_FORMATS = ("png", "svg")  # what the HTML report inlines (a data: URI or the <svg> element)
