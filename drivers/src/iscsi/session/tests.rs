//! The session against a scripted target: every PDU it sends is decoded and
//! checked, every answer is a real encoded PDU.

use super::*;
use crate::iscsi::pdu::{
    DataIn, LoginResponse, LogoutResponse, NopIn, R2t, Reject, ScsiResponse, StatusSn,
};
use alloc::vec;

fn cfg() -> SessionConfig {
    let mut c = SessionConfig::new("iqn.i", "iqn.t", [0x80, 1, 2, 3, 4, 5]);
    c.nop_interval_ms = 1000;
    c.nop_timeout_ms = 500;
    c.task_timeout_ms = 3000;
    c.reconnect_delay_ms = 100;
    c.max_reconnects = 2;
    c.max_task_retries = 1;
    c
}

fn sent(s: &mut Session) -> Vec<Pdu> {
    let mut d = PduDecoder::new(1 << 20);
    d.push(s.transmit());
    let n = s.transmit().len();
    s.consume_transmit(n);
    let mut v = Vec::new();
    while let Some(p) = d.next_pdu().unwrap() {
        v.push(p);
    }
    assert_eq!(d.buffered(), 0);
    v
}

fn reply(s: &mut Session, p: Pdu, now: u64) {
    s.receive(&p.to_bytes().unwrap(), now);
}

fn events(s: &mut Session) -> Vec<Event> {
    core::iter::from_fn(|| s.next_event()).collect()
}

fn sn(stat_sn: u32, exp: u32, max: u32) -> StatusSn {
    StatusSn {
        stat_sn,
        exp_cmd_sn: exp,
        max_cmd_sn: max,
    }
}

fn login_resp(
    csg: Stage,
    nsg: Stage,
    itt: u32,
    stat_sn: u32,
    cmd_sn: u32,
    keys: &[(&str, &str)],
) -> Pdu {
    let mut t = TextPairs::new();
    for (k, v) in keys {
        t.push(k, v);
    }
    Pdu::LoginResponse(LoginResponse {
        transit: true,
        cont: false,
        csg,
        nsg,
        version_max: 0,
        version_active: 0,
        isid: [0x80, 1, 2, 3, 4, 5],
        tsih: 9,
        itt,
        sn: sn(stat_sn, cmd_sn, cmd_sn + 31),
        status_class: 0,
        status_detail: 0,
        data: t.to_bytes(),
    })
}

/// Runs the two-stage login; returns the CmdSN the first command will use.
fn login(s: &mut Session, now: u64, keys: &[(&str, &str)]) -> u32 {
    s.connected(now);
    let Pdu::LoginRequest(r) = &sent(s)[0] else {
        panic!("no login request")
    };
    assert_eq!(
        (r.csg, r.nsg, r.transit),
        (Stage::Security, Stage::Operational, true)
    );
    let t = TextPairs::decode(&r.data).unwrap();
    assert_eq!(t.get("AuthMethod"), Some("None"));
    assert_eq!(t.get("TargetName"), Some("iqn.t"));
    let (itt, cmd_sn) = (r.itt, r.cmd_sn);
    reply(
        s,
        login_resp(
            Stage::Security,
            Stage::Operational,
            itt,
            100,
            cmd_sn,
            &[("TargetPortalGroupTag", "1")],
        ),
        now,
    );
    let Pdu::LoginRequest(r) = &sent(s)[0] else {
        panic!("no operational request")
    };
    assert_eq!((r.csg, r.nsg), (Stage::Operational, Stage::FullFeature));
    assert_eq!(r.exp_stat_sn, 101);
    assert_eq!(
        TextPairs::decode(&r.data)
            .unwrap()
            .get("ErrorRecoveryLevel"),
        Some("0")
    );
    reply(
        s,
        login_resp(
            Stage::Operational,
            Stage::FullFeature,
            itt,
            101,
            cmd_sn,
            keys,
        ),
        now,
    );
    assert!(s.is_logged_in());
    assert_eq!(events(s), vec![Event::LoggedIn { tsih: 9 }]);
    cmd_sn
}

fn good(itt: u32, stat_sn: u32, cmd_sn: u32) -> Pdu {
    Pdu::ScsiResponse(ScsiResponse {
        overflow: false,
        underflow: false,
        response: 0,
        status: 0,
        itt,
        sn: sn(stat_sn, cmd_sn, cmd_sn + 31),
        exp_data_sn: 0,
        residual: 0,
        sense: vec![],
        response_data: vec![],
    })
}

#[test]
fn write_uses_immediate_unsolicited_and_r2t_data() {
    let mut s = Session::new(cfg());
    let keys = [
        ("MaxRecvDataSegmentLength", "1024"),
        ("FirstBurstLength", "4096"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
    ];
    let cmd_sn = login(&mut s, 0, &keys);
    let data: Vec<u8> = (0..10240u32).map(|i| (i * 7) as u8).collect();
    let id = s
        .submit(0, Command::write16(5, data.clone(), 512).unwrap(), 1)
        .unwrap();
    let pdus = sent(&mut s);
    let Pdu::ScsiCommand(c) = &pdus[0] else {
        panic!()
    };
    assert_eq!(
        (c.cmd_sn, c.exp_stat_sn, c.expected_len),
        (cmd_sn, 102, 10240)
    );
    assert!(c.write && !c.final_bit && c.data.len() == 1024);
    let mut got = vec![0u8; data.len()];
    got[..1024].copy_from_slice(&c.data);
    let mut covered = 1024;
    for (i, p) in pdus[1..].iter().enumerate() {
        let Pdu::DataOut(d) = p else { panic!() };
        assert_eq!(
            (d.ttt, d.data_sn, d.buffer_offset as usize),
            (RESERVED_TAG, i as u32, covered)
        );
        assert_eq!(d.final_bit, i == 2);
        got[covered..covered + d.data.len()].copy_from_slice(&d.data);
        covered += d.data.len();
    }
    assert_eq!(covered, 4096, "unsolicited data stops at FirstBurstLength");
    let r2t = R2t {
        lun: 0,
        itt: c.itt,
        ttt: 0x77,
        sn: sn(102, cmd_sn + 1, cmd_sn + 32),
        r2t_sn: 0,
        buffer_offset: 4096,
        desired_len: 6144,
    };
    reply(&mut s, Pdu::R2t(r2t), 2);
    let outs = sent(&mut s);
    assert_eq!(outs.len(), 6);
    for (i, p) in outs.iter().enumerate() {
        let Pdu::DataOut(d) = p else { panic!() };
        assert_eq!((d.ttt, d.data_sn, d.final_bit), (0x77, i as u32, i == 5));
        let o = d.buffer_offset as usize;
        got[o..o + d.data.len()].copy_from_slice(&d.data);
    }
    assert_eq!(got, data);
    reply(&mut s, good(c.itt, 102, cmd_sn + 1), 3);
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [Event::TaskComplete { id: i, result: Ok(r) }] if *i == id && r.status == 0)
    );
}

#[test]
fn read_collects_data_in_and_status_in_last_pdu() {
    let mut s = Session::new(cfg());
    let cmd_sn = login(&mut s, 0, &[]);
    let id = s.submit(0, Command::read16(0, 6, 512).unwrap(), 1).unwrap();
    let Pdu::ScsiCommand(c) = &sent(&mut s)[0] else {
        panic!()
    };
    assert!(c.read && c.final_bit && c.data.is_empty());
    for (k, off) in [0u32, 1024, 2048].into_iter().enumerate() {
        let last = k == 2;
        let d = DataIn {
            final_bit: last,
            ack: false,
            overflow: false,
            underflow: false,
            status: last.then_some(0),
            lun: 0,
            itt: c.itt,
            ttt: RESERVED_TAG,
            sn: sn(102, cmd_sn + 1, cmd_sn + 32),
            data_sn: k as u32,
            buffer_offset: off,
            residual: 0,
            data: vec![k as u8; 1024],
        };
        reply(&mut s, Pdu::DataIn(d), 2);
    }
    let ev = events(&mut s);
    let [Event::TaskComplete {
        id: i,
        result: Ok(r),
    }] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(*i, id);
    assert_eq!(r.data.len(), 3072);
    assert!(r.data[1024..2048].iter().all(|&b| b == 1));
    // StatSN 102 acknowledged by the next command.
    s.submit(0, Command::test_unit_ready(), 3).unwrap();
    let Pdu::ScsiCommand(c2) = &sent(&mut s)[0] else {
        panic!()
    };
    assert_eq!((c2.exp_stat_sn, c2.cmd_sn), (103, cmd_sn + 1));
}

#[test]
fn miscompare_sense_is_a_distinct_outcome() {
    let mut s = Session::new(cfg());
    let cmd_sn = login(&mut s, 0, &[]);
    s.submit(
        0,
        Command::compare_and_write(1, &[0; 512], &[1; 512], 512).unwrap(),
        1,
    )
    .unwrap();
    let Pdu::ScsiCommand(c) = &sent(&mut s)[0] else {
        panic!()
    };
    assert_eq!((c.cdb[0], c.expected_len), (0x89, 1024));
    let Pdu::ScsiResponse(mut r) = good(c.itt, 102, cmd_sn + 1) else {
        panic!()
    };
    r.status = 2;
    r.sense = vec![
        0x70, 0, 0x0e, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0,
    ];
    reply(&mut s, Pdu::ScsiResponse(r), 2);
    let ev = events(&mut s);
    let [Event::TaskComplete { result: Ok(r), .. }] = &ev[..] else {
        panic!()
    };
    assert_eq!(r.check(), Err(Error::Miscompare));
}

#[test]
fn target_ping_is_answered_and_keepalive_detects_a_dead_target() {
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    let ping = NopIn {
        lun: 0,
        itt: RESERVED_TAG,
        ttt: 5,
        sn: sn(102, 1, 32),
        data: b"hi".to_vec(),
    };
    reply(&mut s, Pdu::NopIn(ping), 500);
    let [Pdu::NopOut(o)] = &sent(&mut s)[..] else {
        panic!()
    };
    assert!(o.immediate && o.itt == RESERVED_TAG && o.ttt == 5 && o.data == b"hi");
    // Idle past the interval: we ping; an answer keeps the connection.
    s.poll(1499);
    assert!(sent(&mut s).is_empty());
    s.poll(1500);
    let [Pdu::NopOut(p)] = &sent(&mut s)[..] else {
        panic!()
    };
    assert!(p.itt != RESERVED_TAG && p.ttt == RESERVED_TAG);
    let pong = NopIn {
        lun: 0,
        itt: p.itt,
        ttt: RESERVED_TAG,
        sn: sn(102, 1, 32),
        data: vec![],
    };
    reply(&mut s, Pdu::NopIn(pong), 1600);
    s.poll(2500);
    assert!(s.is_logged_in());
    // Next ping goes unanswered: connection lost, reconnect scheduled.
    let _ = sent(&mut s);
    s.poll(2600);
    let _ = sent(&mut s);
    s.poll(3100);
    assert_eq!(events(&mut s), vec![Event::ConnectionLost(Error::Timeout)]);
    assert!(!s.wants_connect(3199) && s.wants_connect(3200));
}

#[test]
fn lost_connection_reissues_the_task_after_relogin() {
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    let id = s.submit(0, Command::read16(0, 1, 512).unwrap(), 0).unwrap();
    let Pdu::ScsiCommand(first) = &sent(&mut s)[0] else {
        panic!()
    };
    s.poll(3000); // task timeout
    assert_eq!(events(&mut s), vec![Event::ConnectionLost(Error::Timeout)]);
    let cmd_sn = login(&mut s, 3100, &[]);
    let Pdu::ScsiCommand(again) = &sent(&mut s)[0] else {
        panic!("task not re-issued")
    };
    assert_eq!(again.cdb, first.cdb);
    assert_ne!(again.itt, first.itt);
    let Pdu::ScsiResponse(mut r) = good(again.itt, 102, cmd_sn + 1) else {
        panic!()
    };
    r.underflow = true;
    r.residual = 512;
    reply(&mut s, Pdu::ScsiResponse(r), 3200);
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [Event::TaskComplete { id: i, result: Ok(r) }] if *i == id && r.residual == Some(512))
    );
}

#[test]
fn retries_and_reconnects_are_bounded() {
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    let id = s.submit(0, Command::test_unit_ready(), 0).unwrap();
    s.connection_lost(Error::ConnectionClosed, 10); // retry 1 of 1
    assert_eq!(
        events(&mut s),
        vec![Event::ConnectionLost(Error::ConnectionClosed)]
    );
    login(&mut s, 200, &[]);
    let _ = sent(&mut s);
    s.connection_lost(Error::ConnectionClosed, 300); // retry 2: task fails
    let ev = events(&mut s);
    assert!(
        ev.contains(&Event::TaskComplete {
            id,
            result: Err(Error::Timeout)
        }),
        "{ev:?}"
    );
    // Connecting keeps failing: after max_reconnects the session gives up.
    s.connect_failed(Error::ConnectionClosed, 400);
    s.connect_failed(Error::ConnectionClosed, 500);
    assert!(s.is_failed());
    assert!(events(&mut s).contains(&Event::Failed(Error::StorageUnreachable)));
    assert_eq!(
        s.submit(0, Command::test_unit_ready(), 600),
        Err(Error::NotLoggedIn)
    );
}

#[test]
fn cmdsn_window_holds_commands_back() {
    let mut s = Session::new(cfg());
    s.connected(0);
    let Pdu::LoginRequest(r) = &sent(&mut s)[0] else {
        panic!()
    };
    let (itt, cmd_sn) = (r.itt, r.cmd_sn);
    reply(
        &mut s,
        login_resp(Stage::Security, Stage::Operational, itt, 1, cmd_sn, &[]),
        0,
    );
    let _ = sent(&mut s);
    let Pdu::LoginResponse(mut lr) =
        login_resp(Stage::Operational, Stage::FullFeature, itt, 2, cmd_sn, &[])
    else {
        panic!()
    };
    lr.sn.max_cmd_sn = cmd_sn; // window of one command
    reply(&mut s, Pdu::LoginResponse(lr), 0);
    s.submit(0, Command::test_unit_ready(), 1).unwrap();
    s.submit(0, Command::test_unit_ready(), 1).unwrap();
    let p = sent(&mut s);
    assert_eq!(p.len(), 1, "second command waits for the window");
    let Pdu::ScsiCommand(c) = &p[0] else { panic!() };
    reply(&mut s, good(c.itt, 3, cmd_sn + 1), 2); // MaxCmdSN grows
    let Pdu::ScsiCommand(c2) = &sent(&mut s)[0] else {
        panic!()
    };
    assert_eq!(c2.cmd_sn, cmd_sn + 1);
}

#[test]
fn refused_login_and_bad_pdus_end_cleanly() {
    let mut s = Session::new(cfg());
    s.connected(0);
    let Pdu::LoginRequest(r) = &sent(&mut s)[0] else {
        panic!()
    };
    let Pdu::LoginResponse(mut lr) =
        login_resp(Stage::Security, Stage::Operational, r.itt, 1, 1, &[])
    else {
        panic!()
    };
    lr.status_class = 2;
    lr.status_detail = 3; // target not found
    reply(&mut s, Pdu::LoginResponse(lr), 0);
    assert!(s.is_failed());
    // Garbage from the target during full feature phase: connection lost.
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    let mut garbage = [0u8; 48];
    garbage[0] = 0x3e;
    s.receive(&garbage, 1);
    assert!(matches!(
        &events(&mut s)[..],
        [Event::ConnectionLost(Error::UnsupportedOpcode(0x3e))]
    ));
    // A data segment over our MaxRecvDataSegmentLength.
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    s.receive(&[0xff; 48], 1);
    assert!(matches!(
        &events(&mut s)[..],
        [Event::ConnectionLost(Error::DataSegmentTooLong { .. })]
    ));
    // A Reject of a task fails that task; of anything else is surfaced.
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    let id = s.submit(0, Command::test_unit_ready(), 1).unwrap();
    let Pdu::ScsiCommand(c) = &sent(&mut s)[0] else {
        panic!()
    };
    let mut header = [0u8; 48];
    header[16..20].copy_from_slice(&c.itt.to_be_bytes());
    let rej = |header| {
        Pdu::Reject(Reject {
            reason: 9,
            sn: sn(102, 1, 32),
            data_sn: 0,
            header,
        })
    };
    reply(&mut s, rej(header), 2);
    reply(&mut s, rej([0; 48]), 2);
    assert_eq!(
        events(&mut s),
        vec![
            Event::TaskComplete {
                id,
                result: Err(Error::Rejected { reason: 9 })
            },
            Event::Rejected { reason: 9, itt: 0 }
        ]
    );
    assert!(s.is_logged_in());
    // A response for a task we never sent.
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    reply(&mut s, good(77, 102, 1), 1);
    assert!(matches!(
        &events(&mut s)[..],
        [Event::ConnectionLost(Error::Protocol(_))]
    ));
}

#[test]
fn logout_is_confirmed() {
    let mut s = Session::new(cfg());
    login(&mut s, 0, &[]);
    s.logout(1).unwrap();
    let Pdu::LogoutRequest(l) = &sent(&mut s)[0] else {
        panic!()
    };
    assert_eq!((l.reason, l.immediate, l.exp_stat_sn), (0, true, 102));
    let resp = LogoutResponse {
        response: 0,
        itt: l.itt,
        sn: sn(102, 1, 32),
        time2wait: 0,
        time2retain: 0,
    };
    reply(&mut s, Pdu::LogoutResponse(resp), 2);
    assert_eq!(events(&mut s), vec![Event::LoggedOut(Ok(0))]);
    assert!(s.is_logged_out());
    assert_eq!(s.logout(3), Err(Error::NotLoggedIn));
}
