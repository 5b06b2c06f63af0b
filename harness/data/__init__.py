"""Images and masks: the Carvana layout on disk, the built-in synthetic set, folds by car, how an
image is fitted to the network's input (resize, pad, tiles), and the samples a loader draws."""
