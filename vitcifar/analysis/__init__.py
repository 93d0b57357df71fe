"""Looking at a run.

    figures  training curves, confusion matrix, predictions, attention rollout, patches
    flops    FLOPs per image from the layer shapes (no TensorFlow)

May import: vitcifar.errors, vitcifar.config, vitcifar.backend, vitcifar.data, vitcifar.runs,
vit_model.
"""
