//! Login key negotiation (RFC 7143 §13 "Login/Text Operational Text Keys",
//! §6.2 result functions): what the initiator offers and what the session
//! runs with after the target's answers.
//!
//! Only `HeaderDigest=None`, `DataDigest=None` and `ErrorRecoveryLevel=0`
//! are accepted; anything else from the target fails the login.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::iscsi::text::TextPairs;

/// Operational values the initiator proposes (RFC 7143 §13.12-13.19).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Largest data segment we accept (declarative, §13.12).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            max_recv_data_segment_length: 65536,
            max_burst_length: 262_144,
            first_burst_length: 65536,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

impl Offer {
    /// The keys of the operational stage, in the order open-iscsi sends them.
    pub fn operational_keys(&self) -> TextPairs {
        let mut t = TextPairs::new();
        t.push("HeaderDigest", "None");
        t.push("DataDigest", "None");
        t.push("MaxConnections", "1");
        t.push("InitialR2T", yes_no(self.initial_r2t));
        t.push("ImmediateData", yes_no(self.immediate_data));
        t.push(
            "MaxRecvDataSegmentLength",
            &self.max_recv_data_segment_length.to_string(),
        );
        t.push("MaxBurstLength", &self.max_burst_length.to_string());
        t.push("FirstBurstLength", &self.first_burst_length.to_string());
        t.push("DefaultTime2Wait", &self.default_time2wait.to_string());
        t.push("DefaultTime2Retain", &self.default_time2retain.to_string());
        t.push("MaxOutstandingR2T", &self.max_outstanding_r2t.to_string());
        t.push("DataPDUInOrder", "Yes");
        t.push("DataSequenceInOrder", "Yes");
        t.push("ErrorRecoveryLevel", "0");
        t
    }
}

/// The values in force after login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The target's MaxRecvDataSegmentLength: our largest Data-Out segment.
    pub max_send_data_segment_length: u32,
    /// Ours, as declared.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub target_portal_group_tag: Option<u16>,
    pub target_alias: Option<String>,
}

impl Negotiated {
    /// RFC 7143 defaults combined with our offer: what holds for a key the
    /// target does not answer.
    pub fn from_offer(o: &Offer) -> Self {
        Negotiated {
            max_send_data_segment_length: 8192,
            max_recv_data_segment_length: o.max_recv_data_segment_length,
            max_burst_length: o.max_burst_length.min(262_144),
            first_burst_length: o.first_burst_length.min(65536),
            initial_r2t: o.initial_r2t,
            immediate_data: o.immediate_data,
            max_outstanding_r2t: o.max_outstanding_r2t.min(1),
            default_time2wait: o.default_time2wait.max(2),
            default_time2retain: o.default_time2retain.min(20),
            target_portal_group_tag: None,
            target_alias: None,
        }
    }

    /// Applies the target's answers. Returns replies for keys the target
    /// offered on its own (`NotUnderstood` for keys we do not know).
    pub fn apply(&mut self, offer: &Offer, answers: &TextPairs) -> Result<TextPairs> {
        let mut replies = TextPairs::new();
        for (k, v) in &answers.0 {
            if matches!(v.as_str(), "NotUnderstood" | "Irrelevant" | "Reject") {
                continue; // the RFC default (already in place) stays
            }
            match k.as_str() {
                "HeaderDigest" | "DataDigest" => {
                    if v != "None" {
                        return Err(Error::Negotiation("digest other than None"));
                    }
                }
                "AuthMethod" => {
                    if v != "None" {
                        return Err(Error::Negotiation("target requires authentication"));
                    }
                }
                "ErrorRecoveryLevel" => {
                    if v != "0" {
                        return Err(Error::Negotiation("ErrorRecoveryLevel other than 0"));
                    }
                }
                "MaxConnections" => {
                    num(v, 1, 65535)?;
                }
                "MaxRecvDataSegmentLength" => {
                    self.max_send_data_segment_length = num(v, 512, 0xff_ffff)?;
                }
                "MaxBurstLength" => {
                    self.max_burst_length = num(v, 512, 0xff_ffff)?.min(offer.max_burst_length);
                }
                "FirstBurstLength" => {
                    self.first_burst_length = num(v, 512, 0xff_ffff)?.min(offer.first_burst_length);
                }
                "InitialR2T" => self.initial_r2t = offer.initial_r2t || boolean(v)?,
                "ImmediateData" => self.immediate_data = offer.immediate_data && boolean(v)?,
                "DataPDUInOrder" | "DataSequenceInOrder" => {
                    boolean(v)?; // OR with our Yes: always Yes
                }
                "MaxOutstandingR2T" => {
                    let n = num(v, 1, 65535)? as u16;
                    self.max_outstanding_r2t = n.min(offer.max_outstanding_r2t);
                }
                "DefaultTime2Wait" => {
                    let n = num(v, 0, 3600)? as u16;
                    self.default_time2wait = n.max(offer.default_time2wait);
                }
                "DefaultTime2Retain" => {
                    let n = num(v, 0, 3600)? as u16;
                    self.default_time2retain = n.min(offer.default_time2retain);
                }
                "TargetPortalGroupTag" => {
                    self.target_portal_group_tag = Some(num(v, 0, 65535)? as u16);
                }
                "TargetAlias" => self.target_alias = Some(v.clone()),
                "TargetAddress" | "TargetName" | "SessionType" | "InitiatorName" => {}
                _ => replies.push(k, "NotUnderstood"),
            }
        }
        self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
        Ok(replies)
    }
}

fn num(v: &str, min: u32, max: u32) -> Result<u32> {
    let n: u32 = v
        .parse()
        .map_err(|_| Error::Negotiation("numeric key is not a number"))?;
    if !(min..=max).contains(&n) {
        return Err(Error::Negotiation("numeric key out of range"));
    }
    Ok(n)
}

fn boolean(v: &str) -> Result<bool> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(Error::Negotiation("boolean key is neither Yes nor No")),
    }
}

/// The keys of the security stage (RFC 7143 §13.4-13.6, §12.1 AuthMethod).
pub fn security_keys(initiator: &str, target: &str) -> TextPairs {
    let mut t = TextPairs::new();
    t.push("InitiatorName", initiator);
    t.push("TargetName", target);
    t.push("SessionType", "Normal");
    t.push("AuthMethod", "None");
    t
}

/// Keys answered by a target in one login round, used by tests.
pub fn keys(t: &TextPairs) -> Vec<&str> {
    t.0.iter().map(|(k, _)| k.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(pairs: &[(&str, &str)]) -> TextPairs {
        let mut t = TextPairs::new();
        for (k, v) in pairs {
            t.push(k, v);
        }
        t
    }

    #[test]
    fn result_functions_follow_rfc7143() {
        let offer = Offer::default();
        let mut n = Negotiated::from_offer(&offer);
        let r = n
            .apply(
                &offer,
                &answers(&[
                    ("HeaderDigest", "None"),
                    ("DataDigest", "None"),
                    ("MaxRecvDataSegmentLength", "8192"),
                    ("MaxBurstLength", "1048576"),
                    ("FirstBurstLength", "4096"),
                    ("InitialR2T", "Yes"),
                    ("ImmediateData", "Yes"),
                    ("MaxOutstandingR2T", "16"),
                    ("DefaultTime2Wait", "5"),
                    ("DefaultTime2Retain", "60"),
                    ("ErrorRecoveryLevel", "0"),
                    ("TargetPortalGroupTag", "1"),
                    ("X-vendor.Key", "1"),
                ]),
            )
            .unwrap();
        assert_eq!(n.max_send_data_segment_length, 8192);
        assert_eq!(n.max_burst_length, 262_144, "min with our offer");
        assert_eq!(n.first_burst_length, 4096);
        assert!(n.initial_r2t, "OR");
        assert!(n.immediate_data, "AND");
        assert_eq!(n.max_outstanding_r2t, 1);
        assert_eq!(n.default_time2wait, 5, "max");
        assert_eq!(n.default_time2retain, 20, "min");
        assert_eq!(n.target_portal_group_tag, Some(1));
        assert_eq!(r.get("X-vendor.Key"), Some("NotUnderstood"));
    }

    #[test]
    fn unacceptable_answers_fail() {
        let offer = Offer::default();
        for bad in [
            ("HeaderDigest", "CRC32C"),
            ("ErrorRecoveryLevel", "1"),
            ("AuthMethod", "CHAP"),
            ("MaxRecvDataSegmentLength", "100"),
            ("MaxBurstLength", "lots"),
            ("InitialR2T", "Maybe"),
        ] {
            let mut n = Negotiated::from_offer(&offer);
            assert!(n.apply(&offer, &answers(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offer_lists_every_key() {
        let k = Offer::default().operational_keys();
        for key in [
            "HeaderDigest",
            "MaxRecvDataSegmentLength",
            "ErrorRecoveryLevel",
            "InitialR2T",
        ] {
            assert!(keys(&k).contains(&key));
        }
        assert_eq!(security_keys("i", "t").get("SessionType"), Some("Normal"));
    }
}
