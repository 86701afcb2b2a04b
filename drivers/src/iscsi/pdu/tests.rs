//! Round trips of every PDU and rejection of malformed ones.

use super::*;
use crate::iscsi::bhs::{BHS_LEN, RESERVED_TAG};
use alloc::vec;

fn sn() -> StatusSn {
    StatusSn {
        stat_sn: 7,
        exp_cmd_sn: 8,
        max_cmd_sn: 40,
    }
}

fn samples() -> Vec<Pdu> {
    vec![
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 3,
            ttt: RESERVED_TAG,
            cmd_sn: 9,
            exp_stat_sn: 10,
            data: b"ping".to_vec(),
        }),
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: true,
            read: false,
            write: true,
            attr: 1,
            lun: 1 << 48,
            itt: 4,
            expected_len: 1024,
            cmd_sn: 11,
            exp_stat_sn: 12,
            cdb: [0x8a; 16],
            data: vec![5; 17],
        }),
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            itt: 0,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: b"AuthMethod=None\0".to_vec(),
        }),
        Pdu::TextRequest(TextRequest {
            immediate: true,
            final_bit: true,
            cont: false,
            lun: 0,
            itt: 5,
            ttt: RESERVED_TAG,
            cmd_sn: 2,
            exp_stat_sn: 3,
            data: b"SendTargets=All\0".to_vec(),
        }),
        Pdu::DataOut(DataOut {
            final_bit: false,
            lun: 0,
            itt: 6,
            ttt: 77,
            exp_stat_sn: 4,
            data_sn: 2,
            buffer_offset: 8192,
            data: vec![1, 2, 3],
        }),
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 7,
            cid: 1,
            cmd_sn: 5,
            exp_stat_sn: 6,
        }),
        Pdu::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 99,
            sn: sn(),
            data: vec![],
        }),
        Pdu::ScsiResponse(ScsiResponse {
            overflow: false,
            underflow: true,
            response: 0,
            status: 2,
            itt: 8,
            sn: sn(),
            exp_data_sn: 0,
            residual: 512,
            sense: vec![
                0x70, 0, 0x0e, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0,
            ],
            response_data: vec![],
        }),
        Pdu::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0x1234,
            itt: 0,
            sn: sn(),
            status_class: 0,
            status_detail: 0,
            data: b"MaxBurstLength=262144\0".to_vec(),
        }),
        Pdu::TextResponse(TextResponse {
            final_bit: false,
            cont: true,
            lun: 0,
            itt: 5,
            ttt: 1,
            sn: sn(),
            data: b"TargetName=iqn.x".to_vec(),
        }),
        Pdu::DataIn(DataIn {
            final_bit: true,
            ack: false,
            overflow: false,
            underflow: false,
            status: Some(0),
            lun: 0,
            itt: 9,
            ttt: RESERVED_TAG,
            sn: sn(),
            data_sn: 3,
            buffer_offset: 24576,
            residual: 0,
            data: vec![0xEE; 13],
        }),
        Pdu::LogoutResponse(LogoutResponse {
            response: 0,
            itt: 7,
            sn: sn(),
            time2wait: 2,
            time2retain: 20,
        }),
        Pdu::R2t(R2t {
            lun: 0,
            itt: 10,
            ttt: 0x55,
            sn: sn(),
            r2t_sn: 1,
            buffer_offset: 65536,
            desired_len: 65536,
        }),
        Pdu::AsyncMessage(AsyncMessage {
            lun: 0,
            sn: sn(),
            event: 1,
            vcode: 0,
            params: [0, 2, 20],
            sense: vec![],
            event_data: vec![],
        }),
        Pdu::Reject(Reject {
            reason: 9,
            sn: sn(),
            data_sn: 0,
            header: [0x41; BHS_LEN],
        }),
    ]
}

#[test]
fn every_pdu_round_trips() {
    for p in samples() {
        let bytes = p.to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0, "{p:?}");
        let back = Pdu::decode(&bytes, 8192).unwrap();
        assert_eq!(back, p);
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for p in samples() {
        let bytes = p.to_bytes().unwrap();
        for cut in 0..bytes.len() {
            // Cuts inside the padding still hold the whole data segment.
            let hdr_data = BHS_LEN + bytes[5..8].iter().fold(0usize, |a, b| a << 8 | *b as usize);
            if cut >= hdr_data.next_multiple_of(4) {
                continue;
            }
            assert!(Pdu::decode(&bytes[..cut], 8192).is_err(), "{p:?} cut {cut}");
        }
    }
}

#[test]
fn unknown_opcodes_are_rejected() {
    for op in [0x02u8, 0x10, 0x1c, 0x22, 0x3c, 0x3e] {
        let mut b = [0u8; BHS_LEN];
        b[0] = op;
        assert_eq!(Pdu::decode(&b, 0), Err(Error::UnsupportedOpcode(op)));
    }
}

fn mutate(p: &Pdu, f: impl FnOnce(&mut Vec<u8>)) -> Result<Pdu> {
    let mut b = p.to_bytes().unwrap();
    f(&mut b);
    Pdu::decode(&b, 8192)
}

#[test]
fn malformed_fields_are_rejected() {
    let s = samples();
    let login = &s[2];
    // Reserved stage 2, T+C together, NSG before CSG.
    assert!(mutate(login, |b| b[1] = 0x80 | (2 << 2) | 3).is_err());
    assert!(mutate(login, |b| b[1] = 0xC0 | 1).is_err());
    assert!(mutate(login, |b| b[1] = 0x80 | (1 << 2)).is_err());
    assert!(mutate(login, |b| b[1] = 0x80 | 2).is_err());
    // Data-In with S but not F.
    assert!(mutate(&s[10], |b| b[1] = 0x01).is_err());
    // Overflow and underflow together.
    assert!(mutate(&s[10], |b| b[1] = 0x87).is_err());
    assert!(mutate(&s[7], |b| b[1] = 0x86).is_err());
    // SenseLength beyond the data segment.
    assert!(mutate(&s[7], |b| b[49] = 200).is_err());
    // R2T with zero length or without F.
    assert!(mutate(&s[12], |b| b[44..48].fill(0)).is_err());
    assert!(mutate(&s[12], |b| b[1] = 0).is_err());
    // Reject shorter than a header.
    assert!(mutate(&s[14], |b| b[7] = 40).is_err());
    // Logout response with data.
    assert!(mutate(&s[11], |b| {
        b[7] = 4;
        b.extend_from_slice(&[0; 4]);
    })
    .is_err());
    // Text with F and C.
    assert!(mutate(&s[9], |b| b[1] = 0xC0).is_err());
}

#[test]
fn max_data_segment_is_enforced() {
    let p = &samples()[10];
    let bytes = p.to_bytes().unwrap();
    assert_eq!(
        Pdu::decode(&bytes, 12),
        Err(Error::DataSegmentTooLong { len: 13, max: 12 })
    );
}

#[test]
fn sense_split_keeps_response_data() {
    if let Pdu::ScsiResponse(mut r) = samples()[7].clone() {
        r.response_data = vec![1, 2, 3];
        let p = Pdu::ScsiResponse(r.clone());
        assert_eq!(Pdu::decode(&p.to_bytes().unwrap(), 8192).unwrap(), p);
    }
}
