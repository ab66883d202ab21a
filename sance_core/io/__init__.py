"""Reading and writing: the HDF5 artifact store, atomic file writes, images, id lists and the VOC palette."""
