"""HisToGene: a ViT over all spots of a slide (see method.py; the card lives torch-free in card.py)."""
