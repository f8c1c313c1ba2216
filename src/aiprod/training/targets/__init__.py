"""Training targets: one class per kind of phase, behind one interface (``base.Target``).

``factory.make_target`` picks the class for a phase's config (the union keyed on ``target``
in ``aiprod.training.config``). The built-in model's own targets (its prompt verifier) live in
``aiprod.builtin.targets``; training reaches them only through the factory's table.
"""
