"""emflow: blockwise neuron segmentation of 3D electron-microscopy volumes.

The top-level modules (``blocking``, ``supervoxels``, ``labels``, ``graph``,
``costs``, ``multicut``, ``boundaries``) are the pure-numpy algorithm core;
the Luigi workflow, storage and command-line layers build on them.
"""

__version__ = "0.1.0"
