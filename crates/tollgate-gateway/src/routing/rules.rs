//! A route's rules, matched in order against what is known of a request.

use crate::config::{RouteConfig, RouteRule, TaskClass};

/// What a route's rules match on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client's tier.
    pub tier: &'a str,
    /// The classifier's class of the prompt.
    pub task: TaskClass,
    /// The prompt's size in tokens (see `Prompt::tokens`).
    pub prompt_tokens: u64,
    /// The request's hint (header `x-tollgate-route`, or
    /// `metadata.tollgate_route`), if any.
    pub hint: Option<&'a str>,
}

impl RouteRule {
    /// Whether every condition of this rule holds for `f`.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        (self.tiers.is_empty() || self.tiers.iter().any(|t| t == f.tier))
            && (self.tasks.is_empty() || self.tasks.contains(&f.task))
            && self.min_prompt_tokens.is_none_or(|n| f.prompt_tokens >= n)
            && self.max_prompt_tokens.is_none_or(|n| f.prompt_tokens <= n)
            && self.hint.as_deref().is_none_or(|h| Some(h) == f.hint)
    }
}

impl RouteConfig {
    /// The first rule that matches `f`, with its position.
    pub fn select(&self, f: &Facts<'_>) -> Option<(usize, &RouteRule)> {
        self.rules.iter().enumerate().find(|(_, r)| r.matches(f))
    }

    /// Whether any rule looks at the task class (else the classifier need
    /// not run).
    pub fn reads_task(&self) -> bool {
        self.rules.iter().any(|r| !r.tasks.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(f: impl FnOnce(&mut RouteRule), model: &str) -> RouteRule {
        let mut r = RouteRule {
            models: vec![model.into()],
            ..RouteRule::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn rules_are_matched_in_order_on_tier_task_size_and_hint() {
        let route = RouteConfig {
            rules: vec![
                rule(|r| r.hint = Some("cheap".into()), "hinted"),
                rule(
                    |r| {
                        r.tiers = vec!["enterprise".into()];
                        r.tasks = vec![TaskClass::Code, TaskClass::Analysis];
                    },
                    "premium",
                ),
                rule(|r| r.min_prompt_tokens = Some(1_000), "wide"),
                rule(|r| r.max_prompt_tokens = Some(10), "tiny"),
                rule(|_| {}, "default"),
            ],
        };
        let at = |tier, task, prompt_tokens, hint| {
            let f = Facts {
                tier,
                task,
                prompt_tokens,
                hint,
            };
            route.select(&f).map(|(i, r)| (i, r.models[0].clone()))
        };
        use TaskClass::*;
        for (tier, task, tokens, hint, want) in [
            ("enterprise", Code, 50, Some("cheap"), (0, "hinted")),
            ("enterprise", Code, 50, Some("other"), (1, "premium")),
            ("enterprise", Analysis, 5_000, None, (1, "premium")),
            ("enterprise", General, 5_000, None, (2, "wide")),
            ("free", Code, 1_000, None, (2, "wide")),
            ("free", Code, 10, None, (3, "tiny")),
            ("free", Summarisation, 11, None, (4, "default")),
        ] {
            let got = at(tier, task, tokens, hint);
            assert_eq!(
                got,
                Some((want.0, want.1.to_string())),
                "{tier} {task:?} {tokens} {hint:?}"
            );
        }
        assert!(route.reads_task());
        let no_catch_all = RouteConfig {
            rules: vec![rule(|r| r.tiers = vec!["pro".into()], "m")],
        };
        let f = Facts {
            tier: "free",
            task: General,
            prompt_tokens: 1,
            hint: None,
        };
        assert!(no_catch_all.select(&f).is_none());
        assert!(!no_catch_all.reads_task());
    }
}
