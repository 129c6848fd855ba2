//! Sans-IO STUN/TURN codec, TURN REST credentials and ICE server config types.
#![warn(missing_docs)]
