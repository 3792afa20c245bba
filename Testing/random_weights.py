"""Randomly initialised weights at the real architectures of the torch backends, for offline tests,
benchmarks (scripts/bench_gpu.py) and smoke runs. They need the deep-learning extra (torch and the model
packages); Vista3D's are in vista3d_weights.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from LinGuinELib.registration import gradicon
from LinGuinELib.segmentation import nninteractive


def random_gradicon_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a randomly initialised GradICON state dict (the real architecture; its last convolution is zero,
    so it outputs the identity map), for offline tests, benchmarks and smoke runs."""
    import torch

    torch.manual_seed(seed)
    net = gradicon.build_network(gradicon.MIN_INPUT_SIZE)  # the weights do not depend on the grid size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(net.regis_net.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def random_nninteractive_folder(folder: str | os.PathLike, patch_size: int = 64,
                                features: tuple[int, ...] = (8, 16, 32, 32), blocks: tuple[int, ...] | None = None,
                                seed: int = 0) -> Path:
    """Write an nnInteractive model folder with a randomly initialised ResidualEncoderUNet (7 prompt channels,
    as nnInteractive v1.0), for offline tests, benchmarks and smoke runs. The defaults give a small,
    fast network; ``patch_size=192, features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)`` is
    the size of the published model (ResEnc-L) and runs at its speed."""
    import torch
    from nnInteractive.trainer import nnInteractiveTrainer as trainer
    from nnunetv2.utilities.plans_handling import plans_handler

    folder = Path(folder)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    n = len(features)
    blocks = tuple(blocks or (1,) * n)
    configuration = {
        "data_identifier": "random", "preprocessor_name": "DefaultPreprocessor", "batch_size": 1,
        "patch_size": [patch_size] * 3, "median_image_size_in_voxels": [patch_size] * 3, "spacing": [1.0] * 3,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {}, "batch_dice": True,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                "n_blocks_per_stage": list(blocks), "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }
    plans = {"dataset_name": "Dataset999_RandomWeights", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [patch_size] * 3,
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {
                 "0": {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1024.0, "max": 3071.0,
                       "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "target": 1}, "numTraining": 0,
               "file_ending": ".nii.gz"}
    session_info = {"inference_class": "nnInteractiveInferenceSession", "point_radius": 4,
                    "preferred_scribble_thickness": [2, 2, 2], "interaction_decay": 0.98}
    for name, data in (("plans.json", plans), ("dataset.json", dataset), ("inference_session_class.json", session_info)):
        (folder / name).write_text(json.dumps(data, indent=1), encoding="utf-8")
    torch.manual_seed(seed)
    manager = plans_handler.PlansManager(plans)
    network = trainer.nnInteractiveTrainer_stub.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1 + 7, 2, enable_deep_supervision=False)
    checkpoint = {"network_weights": network.state_dict(), "trainer_name": "nnInteractiveTrainer_stub",
                  "init_args": {"configuration": "3d_fullres"}}
    torch.save(checkpoint, folder / "fold_0" / nninteractive.CHECKPOINT)
    return folder
