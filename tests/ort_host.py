"""The profile that reproduces the ONNX Runtime installed here, on this host: MLAS runs other
u8s8 and float kernels on other x86-64 host classes (hw_profiles/onnxruntime-cpu*.yaml). Every
test that compares the simulator with live ORT simulates under this profile."""
from mrq.hw_profile import onnxruntime_profile_for_host

ORT_PROFILE = onnxruntime_profile_for_host()
