"""FineCaption for ROS 2: caption masked image regions with a FineCaption vision-language model."""
# The generated interfaces (finecaption_ros.msg, finecaption_ros.srv) are installed by CMake (scripts/setup_ros.sh,
# or colcon build) into an installed copy of this package. Extending __path__ lets a source checkout that comes first
# on sys.path still find them, and the installed copy find nothing missing.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
