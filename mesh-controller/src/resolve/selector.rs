//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), for `allowedRoutes`
//! namespace selectors.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<Requirement>>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("label selector operator {0:?} is not one of In, NotIn, Exists, DoesNotExist")]
pub struct UnknownOperator(pub String);

impl LabelSelector {
    /// Whether `labels` satisfy every requirement. An empty selector selects everything.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> Result<bool, UnknownOperator> {
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        for (key, value) in self.match_labels.iter().flatten() {
            if labels.get(key) != Some(value) {
                return Ok(false);
            }
        }
        for requirement in self.match_expressions.iter().flatten() {
            let values = requirement.values.as_deref().unwrap_or_default();
            let present = labels.get(&requirement.key);
            let ok = match requirement.operator.as_str() {
                "In" => present.is_some_and(|v| values.contains(v)),
                "NotIn" => present.is_none_or(|v| !values.contains(v)),
                "Exists" => present.is_some(),
                "DoesNotExist" => present.is_none(),
                other => return Err(UnknownOperator(other.to_string())),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, operator: &str, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_all_must_hold() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("team", "a")])),
            match_expressions: Some(vec![
                expr("env", "In", &["prod", "stage"]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        };
        assert_eq!(selector.matches(Some(&labels(&[("team", "a"), ("env", "prod")]))), Ok(true));
        assert_eq!(selector.matches(Some(&labels(&[("team", "a"), ("env", "dev")]))), Ok(false));
        assert_eq!(
            selector.matches(Some(&labels(&[("team", "a"), ("env", "prod"), ("legacy", "")]))),
            Ok(false)
        );
        assert_eq!(selector.matches(None), Ok(false));
        assert_eq!(LabelSelector::default().matches(None), Ok(true), "empty selects all");
    }

    #[test]
    fn not_in_and_exists() {
        let not_in = LabelSelector {
            match_expressions: Some(vec![expr("env", "NotIn", &["prod"])]),
            ..Default::default()
        };
        assert_eq!(not_in.matches(Some(&labels(&[]))), Ok(true), "NotIn holds when the label is absent");
        assert_eq!(not_in.matches(Some(&labels(&[("env", "prod")]))), Ok(false));
        let exists =
            LabelSelector { match_expressions: Some(vec![expr("env", "Exists", &[])]), ..Default::default() };
        assert_eq!(exists.matches(Some(&labels(&[("env", "")]))), Ok(true));
        let bad =
            LabelSelector { match_expressions: Some(vec![expr("env", "Near", &[])]), ..Default::default() };
        assert!(bad.matches(None).is_err());
    }
}
