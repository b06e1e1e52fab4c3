# Sourced by the device scripts that run LIBERO on the GPU machine (device_libero_round3.sh,
# device_heldout_check.sh, learning_libero_rounds/gpu_overfit_8states/run.sh): this repository and the
# LIBERO that device_libero_round3.sh unpacks into $GL_DIR/site on the path, rendering through the
# NVIDIA driver's EGL, one thread per simulator process.
#   GL_DIR=/tmp/gl source docs/device_runs/scripts/gpu_libero_env.sh   (run from the repository root)
export PYTHONPATH=$PWD:${GL_DIR:-/tmp/gl}/site MUJOCO_GL=egl PYOPENGL_PLATFORM=egl OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
