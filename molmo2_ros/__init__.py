"""molmo2_ros: language-driven grounding in video for ROS 2 with Molmo2."""
# The generated interfaces (molmo2_ros.msg, molmo2_ros.action) may live in another
# molmo2_ros directory on sys.path (the pip route installs them into site-packages while
# the code stays in the checkout); merge every such directory into this package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
