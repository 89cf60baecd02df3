use super::*;

fn making() -> Making {
    Making {
        schema: SCHEMA_VERSION,
        series: "simple".into(),
        series_cid: Cid::of(b"series"),
        databases_cid: Cid::of(b"databases"),
        subject: "0xf503017d7baf7fbc0fff7492b751025c6a78179b".into(),
        dress_cid: None,
        dress: serde_json::json!({"original": "0xf503"}),
        prompts: vec![
            Prompt::new("prompt", "a fox"),
            Prompt::new("enhanced", " a vivid fox, in snow \n"),
        ],
        enhancement: Enhancement {
            ran: true,
            model: Some("gpt-5.5".into()),
            request_id: Some("chatcmpl-1".into()),
            skipped: None,
        },
        image: ImageRequest {
            source: "openai".into(),
            model: Some("gpt-image-2".into()),
            size: Some("1024x1024".into()),
            quality: Some("high".into()),
            download: "b64".into(),
            revised_prompt: None,
            response_id: None,
            created: Some(1),
        },
        raw_cid: Cid::of(b"raw"),
        annotation: None,
        server: Build::current(),
    }
}

#[test]
fn parameters_read_like_a1111() {
    assert_eq!(
        making().parameters(),
        "a vivid fox, in snow\nModel: gpt-image-2, Size: 1024x1024, Quality: high, \
         Series: simple, Address: 0xf503017d7baf7fbc0fff7492b751025c6a78179b"
    );
    let mut mock = making();
    mock.prompts.retain(|p| p.kind == "prompt");
    mock.image.model = None;
    mock.image.size = None;
    mock.image.source = "mock".into();
    assert!(
        mock.parameters()
            .starts_with("a fox\nModel: mock, Size: default")
    );
}

#[test]
fn the_embedded_document_round_trips_through_a_png() {
    let image = image::RgbaImage::from_pixel(8, 8, image::Rgba([1, 2, 3, 255]));
    let making = making();
    let png = annotate::encode_png_with_text(&image, Some(&making.png_text().unwrap())).unwrap();
    assert_eq!(Making::from_png(&png).unwrap(), making);
    let bare = annotate::encode_png(&image).unwrap();
    assert!(matches!(
        Making::from_png(&bare),
        Err(ProvenanceError::Missing)
    ));
}

#[test]
fn unknown_schema_versions_are_refused() {
    let record = Record {
        making: Making {
            schema: 2,
            ..making()
        },
        annotated_cid: None,
        request_id: "r".into(),
        phases: vec![],
        cost: Cost {
            usd_micros: 0,
            model: None,
        },
        started_at: timestamp_now(),
        finished_at: timestamp_now(),
    };
    let bytes = record.to_bytes().unwrap();
    assert!(matches!(
        Record::from_bytes(&bytes),
        Err(ProvenanceError::Schema(2))
    ));
    let current = Record {
        making: making(),
        ..record
    };
    assert_eq!(
        Record::from_bytes(&current.to_bytes().unwrap()).unwrap(),
        current
    );
}

#[test]
fn the_schema_is_json_and_names_every_record_field() {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let record = serde_json::to_value(Record {
        making: making(),
        annotated_cid: None,
        request_id: "r".into(),
        phases: vec![],
        cost: Cost {
            usd_micros: 0,
            model: None,
        },
        started_at: timestamp_now(),
        finished_at: timestamp_now(),
    })
    .unwrap();
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut required = required;
    required.sort_unstable();
    assert_eq!(fields, required);
    let stamp = timestamp_now();
    assert_eq!(stamp.len(), 20);
    assert!(stamp.ends_with('Z'));
}
