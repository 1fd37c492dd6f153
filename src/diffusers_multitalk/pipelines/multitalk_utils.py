"""Old import path of the pipeline helpers, split by concern into `sampling`, `guidance`, `image_processing`,
`person_masks` and `color_correction`.

Kept only while modules edited elsewhere still import it (cli.py, app.py, pipeline_wan_infinitetalk.py,
video_input.py, tests/test_pipeline.py); delete it once they import from the modules above.
"""

from .color_correction import lab_to_rgb, match_color_lab, rgb_to_lab
from .guidance import APGState, MomentumBuffer, adaptive_projected_guidance, combine_guidance, combine_guidance_two_pass
from .image_processing import (
    ASPECT_RATIO_627,
    ASPECT_RATIO_960,
    RESOLUTION_BUCKETS,
    center_crop_offsets,
    closest_bucket,
    load_image_any,
    preprocess_image,
    resize_and_center_crop,
    resize_and_center_crop_masks,
    resolution_buckets,
)
from .person_masks import default_person_masks, latent_person_masks, person_masks_from_bboxes
from .sampling import (
    add_noise_flow,
    make_multitalk_scheduler,
    multitalk_sigmas,
    multitalk_timesteps,
    set_multitalk_timesteps,
)
