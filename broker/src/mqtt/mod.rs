//! The embedded MQTT side: the two rumqttd planes and who may connect to them.

pub mod auth;
pub mod front;
pub mod gate;
pub mod nodelay;
pub mod plane;
