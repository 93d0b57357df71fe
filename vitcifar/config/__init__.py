"""The settings of a run, with no TensorFlow: flags are parsed and checked, and the GPU
chosen, before TensorFlow is imported.

    settings        TrainConfig (the experiment), RunOptions (this machine), validation
    views           the flat views: leaf fields, flat(), override(), differences
    presets         the named presets, each documented: source, reported accuracy, command
    regularisation  the rule of regularisation "auto"
    config_file     config.json's layout
    datasets        the dataset facts: names, image size, classes, official archives
    flags           the command line, generated from the settings

May import: vitcifar.errors, and modules of this subpackage.
"""
