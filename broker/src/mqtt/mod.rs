//! The embedded MQTT side: the two rumqttd planes and who may connect to them.

pub mod auth;
pub mod nodelay;
pub mod plane;
