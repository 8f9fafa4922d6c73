"""Names of the registered harmonization methods, importable without torch.

The CLI parser offers them as choices and must answer ``--help`` at once; the
registry (:mod:`bids_harmony.methods.registry`) holds the methods themselves and a
test checks that both agree.
"""

METHOD_NAMES = ("harp", "rish", "combat", "dki-cnn")
#: ``--combat-variant`` choices (:data:`bids_harmony.methods.combat.variants.VARIANTS`).
COMBAT_VARIANTS = ("combat", "gam", "covbat", "longitudinal")
