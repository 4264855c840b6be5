"""Toy models (notebook 07): small settings where the mechanism is known, so claims about it can be checked.

    from mikit.toys import superposition, max_of_k, modular_addition
    superposition.phase_diagram([0.0, 0.9, 0.99], [0.3, 1.0, 3.0])   # Elhage et al. 2022: features in superposition
    max_of_k.cubic_proof(mikit.load_model("max-of-4"))                 # Gross et al. 2024: proofs from circuits
    modular_addition.key_frequencies(mikit.load_model("modular-addition"))   # Nanda et al. 2023: grokking

The superposition toys train in seconds, in the notebook; the transformers are zoo models
(`mikit.toys.zoo_models` trains them: `python -m mikit.zoo train max-of-4`).
"""
