"""Explanations of a model's calls: Grad-CAM, Grad-CAM++, feature maps, regions of interest and
the shortcut score, plus their rendering and their artifacts in object storage.

A library layer beside ``cxr.core``, used by the worker, training evaluation and the CLI. Only
the modules that run a model (``probe``, ``gradients``, ``methods``) touch Keras, and they import
it inside functions, so importing this package stays as cheap as importing NumPy.

Modules, one job each:

=================  ================================================================================
``scores``         which class each image is explained for, and its score tensor
``probe``          a model → (conv activations, logits, probabilities) sub-model
``gradients``      the one backend-specific module: activations and per-sample gradients
``methods``        ``ExplanationMethod`` and its variants (GradCAM, GradCAMPlusPlus, FeatureMaps)
``maps``           pure array helpers: ReLU + safe normalisation, upsampling
``geometry``       where the original image lies inside the model input ('stretch' / 'pad')
``regions``        regions of interest in original-image pixels
``shortcut``       share of heatmap energy outside the central chest region, and its aggregates
``explainer``      decoded images → per-image explanations (prediction, heatmap, ROIs, score)
``render``         overlay PNG, feature-map grid PNG, heatmap ``.npz``, ROI JSON
``artifacts``      object-storage keys, writing the files, SQL ``Artifact`` rows
=================  ================================================================================
"""
