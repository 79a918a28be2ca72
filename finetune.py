"""Expert iteration: ``python finetune.py --config configs/dna/finetune.yaml --rounds 3 [--output_dir DIR]``.

Each round draws guided samples from the previous round's model, fine-tunes that model on them and
exports it to ``DIR/round_<k>/model`` (see svdd_lightning/lightning/expert_iteration.py). A killed run
continues from the last finished round; other arguments are ``train.py fit`` overrides for every round.
"""
from svdd_lightning.lightning.expert_iteration import main

if __name__ == "__main__":
    main()
