//! `[ranking]`: the engine ranking policy (checked by `lb-module-api`).

use super::Validator;

impl Validator<'_> {
    pub(super) fn ranking(&mut self, r: &lb_module_api::RankPolicy) {
        if let Err(e) = r.validate() {
            self.err("ranking", e);
        }
    }
}
