//! `[websocket]`: the idle timeout of tunnels.

use super::{Validator, DAY, MS};
use crate::{file, WebSocket};

impl Validator<'_> {
    pub(super) fn websocket(&mut self, w: &file::WebSocketFile) -> WebSocket {
        WebSocket {
            idle_timeout: self.dur("websocket.idle_timeout", &w.idle_timeout, MS, 7 * DAY),
        }
    }
}
