"""Device plugins for the plugin controller: the SDK, the conformance test and the built-ins.

Plugin authors import from here: `from waystation.plugins import DevicePlugin, ChannelDescriptor, Reading`.
"""

from waystation.plugins.sdk import (
    ChannelDescriptor,
    DevicePlugin,
    Direction,
    Health,
    PluginConfigError,
    PluginError,
    Reading,
    WriteRefused,
)

__all__ = [
    "ChannelDescriptor",
    "DevicePlugin",
    "Direction",
    "Health",
    "PluginConfigError",
    "PluginError",
    "Reading",
    "WriteRefused",
]
